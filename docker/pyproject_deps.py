"""Print the project's requirements from pyproject.toml, one a line, for `pip install -r`.

Images install these (pinned by docker/constraints.txt) before copying the source, so a code
change reuses the dependency layer: python3 pyproject_deps.py pyproject.toml [EXTRA ...]
"""

import sys
import tomllib

with open(sys.argv[1], "rb") as f:
    project = tomllib.load(f)["project"]
lines = list(project["dependencies"])
for extra in sys.argv[2:]:
    lines += project["optional-dependencies"][extra]
print("\n".join(lines))
