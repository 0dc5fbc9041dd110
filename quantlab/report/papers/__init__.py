"""The papers' tables as data (one YAML file per table), read by `quantlab table --paper <name>`."""
