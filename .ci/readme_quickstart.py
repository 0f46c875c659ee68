"""Print line N (1 or 2) of the README's quick-start code block."""
import re
import sys
from pathlib import Path

readme = Path(__file__).resolve().parent.parent / "README.md"
section = readme.read_text().split("## Quick start", 1)[1]
block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
lines = [line for line in block.splitlines() if line.strip()]
if len(lines) != 2:
    sys.exit(f"README quick start: expected exactly 2 command lines, found {len(lines)}")
print(lines[int(sys.argv[1]) - 1])
