"""Fill the generated sections of README.md: the op table from the rule registry and the zoo
table from the last `bench/zoo_reduction.py` run."""
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from graphprune.rules import describe_rules  # noqa: E402


def fill(text: str, tag: str, body: str) -> str:
    pattern = re.compile(rf"(<!-- {tag}:begin -->\n).*?(<!-- {tag}:end -->)", re.S)
    return pattern.sub(lambda m: m.group(1) + body.rstrip() + "\n" + m.group(2), text)


def main() -> None:
    readme = ROOT / "README.md"
    text = fill(readme.read_text(), "rules", describe_rules())
    zoo = ROOT / "bench" / "results" / "zoo_reduction.md"
    if zoo.exists():
        text = fill(text, "zoo", zoo.read_text())
    readme.write_text(text)


if __name__ == "__main__":
    main()
