#!/usr/bin/python3
"""Runs a command under the system call filter a systemd unit's SystemCallFilter= lines
describe, as systemd would load it (allow-list first, then "~" lines removing from it), so
the tests see what the installed unit does without systemd as PID 1. Groups are expanded by
`systemd-analyze syscall-filter`. What the unit would answer with SystemCallErrorNumber=
kills here instead (SIGSYS), so any call the unit lacks is loud.

    unit_syscall_filter.py UNIT [--also NAME ...] -- COMMAND [ARG ...]
    unit_syscall_filter.py UNIT --list        (prints the allowed names, one per line)

Needs Debian's python3-seccomp, hence /usr/bin/python3."""

import os
import subprocess
import sys

import seccomp


def groups():
    """Every @group of this systemd, with its members (names and @groups) as listed."""
    text = subprocess.run(["systemd-analyze", "syscall-filter"], check=True, capture_output=True, text=True).stdout
    table, current = {}, None
    for line in text.splitlines():
        if line.startswith("@"):
            current = line.split()[0]
            table[current] = []
        elif current and line.strip() and not line.strip().startswith("#"):
            table[current].append(line.strip())
    return table


def expand(name, table, seen=None):
    seen = set() if seen is None else seen
    if not name.startswith("@"):
        return {name}
    if name in seen:
        return set()
    seen.add(name)
    if name not in table:
        sys.exit(f"unit_syscall_filter: unknown group {name}")
    result = set()
    for member in table[name]:
        result |= expand(member, table, seen)
    return result


def allowed(unit):
    table = groups()
    allow, deny, listed = set(), set(), False
    with open(unit) as f:
        for line in f:
            line = line.strip()
            if not line.startswith("SystemCallFilter="):
                continue
            value = line.split("=", 1)[1].strip()
            negated = value.startswith("~")
            names = value.lstrip("~").split()
            for name in names:
                (deny if negated else allow).update(expand(name, table))
            listed = listed or not negated
    if not listed:
        sys.exit(f"unit_syscall_filter: {unit} has no SystemCallFilter= allow-list")
    return allow - deny


def main():
    arguments = sys.argv[1:]
    if not arguments:
        sys.exit(__doc__)
    unit, rest = arguments[0], arguments[1:]
    names = allowed(unit)
    if rest == ["--list"]:
        print("\n".join(sorted(names)))
        return
    while rest and rest[0] == "--also":
        names.add(rest[1])
        rest = rest[2:]
    if not rest or rest[0] != "--" or len(rest) < 2:
        sys.exit(__doc__)
    command = rest[1:]
    rules = seccomp.SyscallFilter(defaction=seccomp.KILL_PROCESS)
    for name in sorted(names):
        try:
            rules.add_rule(seccomp.ALLOW, name)
        except (RuntimeError, ValueError):
            pass  # a name this kernel's architecture does not have
    # The unit sets NoNewPrivileges=yes, which loading a filter unprivileged needs anyway.
    rules.set_attr(seccomp.Attr.CTL_NNP, 1)
    rules.load()
    os.execv(command[0], command)


if __name__ == "__main__":
    main()
