"""Import every module of an installed edgeshard (run by .ci/run from outside the checkout,
with the installed venv's python): a package left out of the build fails here, not when an
installed daemon starts."""

import importlib
import pkgutil

names = []
for top in ("edgeshard", "edge_node", "protos", "ext", "coordinator", "edgeshard_models"):
    package = importlib.import_module(top)
    names.append(top)
    names += [m.name for m in pkgutil.walk_packages(package.__path__, top + ".")
              if not m.name.endswith(".__main__")]  # those run the CLI
for name in names:
    module = importlib.import_module(name)
    assert "site-packages" in (module.__file__ or ""), f"{name} imported from {module.__file__}"
print(f"installed: all {len(names)} modules import from site-packages")
