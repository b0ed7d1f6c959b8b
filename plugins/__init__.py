"""Built-in dclszoo plugins, one sub-package each (``dclszoo.plugins.<name>``).

This package shares its name with the API function :func:`dclszoo.plugins` (importing a sub-package sets
``dclszoo.plugins`` to this package), so the package itself is callable: ``dclszoo.plugins()`` returns the
list of :class:`dclszoo.PluginInfo` whichever of the two ``dclszoo.plugins`` currently is.
"""

import sys
import types


class _CallablePackage(types.ModuleType):
    def __call__(self):
        """The plugins known so far (see :func:`dclszoo._plugins.plugins`)."""
        from .._plugins import plugins

        return plugins()


sys.modules[__name__].__class__ = _CallablePackage
