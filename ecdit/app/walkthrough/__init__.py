"""The annotated walkthrough: the spec beside its twin, with the tests that prove them equal, as
self-contained HTML pages built from the source (`ecdit walkthrough --out DIR`).

One page per module of the spec, in `reference.MODULES` order, plus an index (the layers, the
shapes glossary, the equation -> spec -> twin -> tests table, the deviations and the errata) and
one page of source per linked test file. The build reads the code with `ast` (nothing of the
twin is imported or compiled) and refuses, naming the function, anything that would make a page
lie: a spec function without a twin or without a formula, an equation cited in a docstring that
has no rendered form, TeX that does not render, a function that no test runs in both halves, a
link that points nowhere.
"""
from .pages import BuildSummary, WalkthroughError, build  # noqa: F401
