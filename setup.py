# Package discovery. The one thing pyproject.toml cannot say is that conf/ (kept at the top of the
# checkout) is the package quantlab.conf, each config group folder a subpackage holding its YAML.
from setuptools import find_namespace_packages, find_packages, setup

conf = find_namespace_packages(where="conf", exclude=["*__pycache__*"])
setup(
    packages=[
        *find_packages(include=["quantlab", "quantlab.*"]),
        "quantlab.conf",
        *(f"quantlab.conf.{name}" for name in conf),
    ],
    package_dir={"quantlab.conf": "conf"},
)
