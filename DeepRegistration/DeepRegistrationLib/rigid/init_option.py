"""The ``init`` and ``confidence`` options every rigid method takes (torch-free: the method specs import them)."""
from ..method_spec import Option

INIT_OPTION = Option("init", "str", "search", "start when no initial transform is given: coarse rotation search, "
                     "principal moments, centres of mass, or none (identity)",
                     choices=("search", "moments", "center", "none"))
CONFIDENCE_OPTION = Option("confidence", "bool", True, "estimate the result's uncertainty and flag a likely failure "
                           "(report key 'confidence'; see docs/rigid-robustness.md)")
