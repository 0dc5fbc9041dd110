"""Reports over many runs: finding them, tables (markdown, CSV, LaTeX), paper tables, plots."""
