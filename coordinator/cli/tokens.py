"""``edge-coordinator tokens``: keep the coordinator's bearer-token file (``--auth-tokens``).

``add`` makes a random token, appends its SHA-256 with a name and roles to the file and
prints the token once (it is stored nowhere else); ``list`` shows names and roles;
``revoke`` removes every token of a name. A running coordinator picks the change up
within a second. The file format is ``edgeshard.auth``'s.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from edgeshard.auth import (
    NODE,
    ROLES,
    TokenFileError,
    load_token_table,
    new_token,
    parse_tokens,
    token_digest,
)
from edgeshard.certs import write_file

HEADER = ("# edgeshard bearer tokens (edge-coordinator tokens add|list|revoke). Each entry\n"
          "# holds the SHA-256 of a token, never the token. Roles: infer, jobs, admin, node.\n")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add the ``tokens`` subcommand's actions and options to ``p``."""
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = actions.add_parser("add", help="make a token, store its hash, print it once",
                             description="Make a random token for NAME with the given roles, "
                             "append its SHA-256 to --file (created 0600 if missing) and print "
                             "the token. Give it to its holder: the CLI's --token / "
                             "EDGESHARD_TOKEN, or edge-node --join-token for role node.")
    add.add_argument("--name", required=True,
                     help="who holds it (a job belongs to this name; for role node: the "
                     "node's id)")
    add.add_argument("--role", action="append", required=True, choices=ROLES,
                     help="infer (inference, node list), jobs (+ own jobs), admin (+ every "
                     "job, drain, repository), node (join token); repeat for several")
    for action in (add, actions.add_parser("list", help="show each token's name and roles"),
                   actions.add_parser("revoke", help="remove every token of a name")):
        action.add_argument("--file", required=True, type=Path,
                            help="the token file (the coordinator's --auth-tokens)")
    actions.choices["revoke"].add_argument("--name", required=True, help="whose tokens")


def _entries(path: Path) -> list[dict]:
    """The file's ``[[token]]`` tables, checked as the coordinator checks them; [] for a
    file that does not exist. ``TokenFileError`` names what is wrong."""
    if not path.exists():
        return []
    data = load_token_table(path, "--file")
    parse_tokens(data, f"--file: {path}")
    return list(data.get("token", []))


def _render(entries: list[dict]) -> str:
    out = [HEADER]
    for entry in entries:
        out.append("\n[[token]]\n")
        out.append(f"name = {json.dumps(entry['name'])}\n")
        roles = entry["roles"] if isinstance(entry["roles"], list) else [entry["roles"]]
        out.append(f"roles = [{', '.join(json.dumps(r) for r in roles)}]\n")
        key = "sha256" if "sha256" in entry else "token"
        out.append(f"{key} = {json.dumps(entry[key])}\n")
    return "".join(out)


def main(args) -> int:
    """Run ``edge-coordinator tokens ACTION``; 0 on success, 2 for a bad file or
    arguments, 1 when the file cannot be written."""
    try:
        entries = _entries(args.file)
        if args.action == "list":
            for entry in entries:
                roles = entry["roles"] if isinstance(entry["roles"], list) else [entry["roles"]]
                print(f"{entry['name']}\t{','.join(roles)}")
            if not entries:
                print(f"no tokens in {args.file}", file=sys.stderr)
            return 0
        name = args.name.strip()
        if not name:
            print("edge-coordinator tokens: --name: must not be empty", file=sys.stderr)
            return 2
        if args.action == "revoke":
            kept = [e for e in entries if e["name"].strip() != name]
            if len(kept) == len(entries):
                print(f"edge-coordinator tokens: --name: no token of {name!r} in {args.file}",
                      file=sys.stderr)
                return 2
            write_file(args.file, _render(kept).encode(), 0o600)
            print(f"revoked {len(entries) - len(kept)} token(s) of {name!r}")
            return 0
        roles = list(dict.fromkeys(args.role))
        token = new_token()
        entries.append({"name": name, "roles": roles, "sha256": token_digest(token)})
        parse_tokens({"token": entries}, f"--file: {args.file}")  # the result must load
        write_file(args.file, _render(entries).encode(), 0o600)
    except TokenFileError as exc:
        print(f"edge-coordinator tokens: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"edge-coordinator tokens: cannot write {args.file}: {exc.strerror or exc}",
              file=sys.stderr)
        return 1
    use = ("edge-node --join-token (or EDGESHARD_JOIN_TOKEN) with --node-id " + name
           if NODE in roles else "the CLI's --token (or EDGESHARD_TOKEN)")
    print(token)
    print(f"added a token for {name!r} ({', '.join(roles)}) to {args.file}; it is shown only "
          f"now: give it to {use}", file=sys.stderr)
    return 0
