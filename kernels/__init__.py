"""dclszoo's kernels (``dclszoo.kernels``): one file per op, and ``backend`` choosing among them.

This folder is ``kernels/`` in the source tree. Python run from the tree's root (``python -c``, ``python -m
pytest``) puts that root on ``sys.path``, where the folder would shadow an installed top-level package named
``kernels`` (Hugging Face's, which transformers requires and imports). Imported under that name, this module
hands over to the installed package, or says what happened.
"""

if __name__ == "kernels":  # pragma: no cover - only when the source root is on sys.path
    import importlib.machinery
    import importlib.util
    import os
    import sys

    _source_root = os.path.realpath(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    _others = [p for p in sys.path if os.path.realpath(os.path.abspath(p or os.getcwd())) != _source_root]
    _spec = importlib.machinery.PathFinder.find_spec("kernels", _others)
    if _spec is None:
        raise ImportError(
            "'kernels' resolved to dclszoo's source folder (kernels/, importable as dclszoo.kernels) because the "
            "source root is on sys.path; no other package named 'kernels' is installed. Import dclszoo.kernels, or "
            "run Python from another directory."
        )
    _module = importlib.util.module_from_spec(_spec)
    sys.modules["kernels"] = _module
    _spec.loader.exec_module(_module)
