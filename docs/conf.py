"""Sphinx configuration of cbn's API reference.

Build (after ``pip install -e ".[docs]"``), warnings as errors, then run the
examples as doctests:

    sphinx-build -W -b html docs docs/_build/html
    sphinx-build -W -b doctest docs docs/_build/doctest
"""
import cbn

project = "cbn"
author = "the cbn developers"
copyright = "2026, the cbn developers"
release = cbn.__version__
version = release

extensions = ["sphinx.ext.autodoc", "sphinx.ext.doctest", "numpydoc"]

# numpydoc: the layers' members are documented once, on the base class
numpydoc_show_class_members = False
numpydoc_attributes_as_param_list = True
# every documented object's docstring is checked; with -W a failure fails the build
numpydoc_validation_checks = {
    "GL03", "GL06", "GL07", "GL08",   # blank lines, unknown or misplaced sections, no docstring
    "PR01", "PR02", "PR03", "PR06", "PR07", "PR08", "PR09",   # every parameter, described
    "RT01", "RT03",                   # a Returns section, described
    "SS01", "SS03", "SS06",           # a one-line summary ending in a period
}

autodoc_member_order = "bysource"
autodoc_typehints = "none"

doctest_global_setup = "import numpy as np\nimport cbn"

exclude_patterns = ["_build"]
html_theme = "alabaster"
html_static_path = []
