"""Character rules shared by the manifest loader and the CLI's argument check (SPEC §12).

Standard library only: the CLI checks every argument before it imports a database library.
"""

from __future__ import annotations

import re

#: C0 controls other than TAB/LF/CR, DEL and the C1 controls
CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
