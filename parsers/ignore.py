"""Which workspace files ghostls may read: built-in secret patterns, .gitignore and .ghostlsignore (gitignore syntax).

Owns the decision "may this path's text go into a prompt?". Secret files are never read, indexed or completed in;
ignored files are never indexed. Must never read a file's contents (only the ignore files themselves).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlparse

import pathspec

# Files that hold credentials. Their text must never reach a model, a prompt or a log, whatever else is set.
SECRET_PATTERNS: tuple[str, ...] = (
    ".env", ".env.*", "*.env", ".envrc", ".netrc", ".npmrc", ".pypirc", ".pgpass", ".git-credentials",
    "id_rsa*", "id_dsa*", "id_ecdsa*", "id_ed25519*", "*.pem", "*.key", "*.p12", "*.pfx", "*.jks", "*.keystore",
    "*.kdbx", "*.gpg", "*.asc", "credentials", "credentials.json", "credentials.*", "*credentials*.json",
    "secrets.*", "*.secret", "*.secrets", "service-account*.json", "*.tfvars", "*.tfstate", ".ssh/",
    ".aws/", ".gnupg/", ".docker/config.json", ".kube/config",
)
# Never indexed (not secret, just noise or huge), on top of .gitignore.
NOISE_PATTERNS: tuple[str, ...] = (
    ".git/", ".hg/", ".svn/", "node_modules/", ".venv/", "venv/", "__pycache__/", ".mypy_cache/", ".tox/",
    "dist/", "build/", "target/", ".cache/", "*.min.js", "*.map", "*.lock", "package-lock.json",
)
IGNORE_FILE = ".ghostlsignore"


def uri_to_path(uri: str) -> str | None:
    """The file system path of a file: uri, or None for other schemes (untitled:, git:...)."""
    parsed = urlparse(uri)
    if parsed.scheme != "file":
        return None
    return unquote(parsed.path)


@dataclass
class IgnoreRules:
    """Patterns for one set of workspace roots. Secret patterns win over everything; a root's `.ghostlsignore`
    adds to them (no completion in, and no reading of, what it lists); `.gitignore` only keeps files out of the index.
    """

    roots: tuple[Path, ...] = ()
    extra_secret: tuple[str, ...] = ()  # from the `secretPatterns` setting
    _secret: pathspec.GitIgnoreSpec = field(init=False, repr=False)
    _user: dict[Path, pathspec.GitIgnoreSpec] = field(init=False, repr=False, default_factory=dict)
    _ignored: dict[Path, pathspec.GitIgnoreSpec] = field(init=False, repr=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.roots = tuple(Path(os.path.abspath(r)) for r in self.roots)
        self._secret = pathspec.GitIgnoreSpec.from_lines([*SECRET_PATTERNS, *self.extra_secret])
        self.reload()

    def reload(self) -> None:
        """Re-read each root's .gitignore and .ghostlsignore (after they change on disk)."""
        self._user, self._ignored = {}, {}
        for root in self.roots:
            user = _read_lines(root / IGNORE_FILE)
            self._user[root] = pathspec.GitIgnoreSpec.from_lines(user)
            lines = [*NOISE_PATTERNS, *_read_lines(root / ".gitignore"), *user]
            self._ignored[root] = pathspec.GitIgnoreSpec.from_lines(lines)

    def is_secret(self, path: str | os.PathLike) -> bool:
        """True for a file that must never be read nor completed in: a secret pattern or a `.ghostlsignore` entry.

        Patterns match relative to the workspace root holding the file; a file outside every root is judged by
        its last two path components (".ssh/id_rsa", "config/.env").
        """
        root, inner = self._inside(path)
        if root is None:
            parts = PurePosixPath(Path(path).as_posix()).parts
            return self._secret.match_file("/".join(parts[-2:]))
        return self._secret.match_file(inner) or self._user[root].match_file(inner)

    def is_ignored(self, path: str | os.PathLike) -> bool:
        """True for a file the index must skip: a secret, or matched by .gitignore / .ghostlsignore / noise."""
        if self.is_secret(path):
            return True
        root, inner = self._inside(path)
        return root is not None and self._ignored[root].match_file(inner)

    def _inside(self, path: str | os.PathLike) -> tuple[Path | None, str]:
        path = os.fspath(path)
        absolute = os.path.abspath(path)
        # A trailing separator marks a folder; gitignore's "dir/" patterns only match folders.
        slash = "/" if path.endswith(os.sep) else ""
        for root in self.roots:
            rel = os.path.relpath(absolute, root)
            if not rel.startswith(".." + os.sep) and rel not in ("..", "."):
                return root, Path(rel).as_posix() + slash
        return None, ""


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []
