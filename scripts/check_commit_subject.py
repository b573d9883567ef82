"""commit-msg hook: refuse a commit whose subject line is empty or longer than 72 characters.

    .venv/bin/python scripts/check_commit_subject.py .git/COMMIT_EDITMSG

pre-commit runs it at the commit-msg stage (.pre-commit-config.yaml); exit 1 with one line on stderr if refused.
"""
from __future__ import annotations

import sys
from pathlib import Path

LIMIT = 72


def subject(message: str) -> str:
    """The subject: the first line that is neither blank nor a git comment ('#')."""
    return next((line.rstrip() for line in message.splitlines() if line.strip() and not line.startswith("#")), "")


def problem(message: str) -> str | None:
    """Why the message's subject is refused, or None."""
    first = subject(message)
    if not first:
        return "empty commit subject: say what changed in one line"
    if len(first) > LIMIT:
        return (f"commit subject is {len(first)} characters, at most {LIMIT}: say what changed, put the why in "
                f"the body ({first[:LIMIT]}...)")
    return None


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: check_commit_subject.py COMMIT_MSG_FILE", file=sys.stderr)
        return 2
    why = problem(Path(argv[0]).read_text(encoding="utf-8"))
    if why:
        print(f"error: {why}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
