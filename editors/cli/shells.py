"""Shell completion scripts for `ghostls`, generated from its argparse parser (bash, zsh, fish).

Reads the parser only: a new subcommand or option shows up in the scripts by itself. Never runs anything
in the user's shell; the scripts call no ghostls process while completing (they are instant).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field


@dataclass
class Option:
    flags: list[str]
    help: str
    takes_value: bool
    choices: list[str] | None


@dataclass
class Command:
    path: str  # "" for `ghostls`, "/model/convert" for `ghostls model convert`
    help: str = ""
    options: list[Option] = field(default_factory=list)
    subcommands: dict[str, Command] = field(default_factory=dict)
    choices: list[str] = field(default_factory=list)  # a positional argument's choices (`completions SHELL`)
    takes_path: bool = False  # a free positional argument: a file, folder or FILE:LINE:COL


def command_tree(parser: argparse.ArgumentParser, path: str = "", help: str = "") -> Command:
    command = Command(path, help)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            for name, sub in action.choices.items():
                command.subcommands[name] = command_tree(sub, f"{path}/{name}", helps.get(name, ""))
        elif action.option_strings:
            choices = [str(c) for c in action.choices] if action.choices else None
            command.options.append(Option(list(action.option_strings), action.help or "", action.nargs != 0, choices))
        elif action.choices:
            command.choices += [str(c) for c in action.choices]
        else:
            command.takes_path = True
    return command


def _walk(command: Command):
    yield command
    for sub in command.subcommands.values():
        yield from _walk(sub)


def script(shell: str, parser: argparse.ArgumentParser) -> str:
    tree = command_tree(parser)
    return {"bash": _bash, "zsh": _zsh, "fish": _fish}[shell](tree)


# -- bash --------------------------------------------------------------------------------------------
def _bash(tree: Command) -> str:
    commands = [c for c in _walk(tree) if c.path]
    known = "|".join(c.path for c in commands)
    values, free = [], []
    levels = []
    for c in _walk(tree):
        for option in c.options:
            if option.takes_value:
                cases = [f'"{c.path} {flag}"' for flag in option.flags]
                if option.choices:
                    values.append(f'        {"|".join(cases)}) COMPREPLY=($(compgen -W "{" ".join(option.choices)}" '
                                  '-- "$cur")); return ;;')
                else:
                    free += cases
        flags = " ".join(flag for option in c.options for flag in option.flags)
        words = " ".join([*c.subcommands, *c.choices])
        levels.append(f'        "{c.path}") options="{flags}"; words="{words}" ;;')
    return f'''# bash completion for ghostls. Load it with: source <(ghostls completions bash)
_ghostls() {{
    local cur=${{COMP_WORDS[COMP_CWORD]}} prev=${{COMP_WORDS[COMP_CWORD-1]}} cmd="" options="" words="" i
    # The subcommand path typed so far, e.g. /model/convert.
    for ((i = 1; i < COMP_CWORD; i++)); do
        case "$cmd/${{COMP_WORDS[i]}}" in
            {known}) cmd="$cmd/${{COMP_WORDS[i]}}" ;;
        esac
    done
    case "$cmd $prev" in
{chr(10).join(values)}
        # An option's free value: bash's default completion (file names).
        {"|".join(free)}) return ;;
    esac
    case "$cmd" in
{chr(10).join(levels)}
    esac
    if [[ $cur == -* ]]; then
        COMPREPLY=($(compgen -W "$options" -- "$cur"))
    elif [[ -n $words ]]; then
        COMPREPLY=($(compgen -W "$words" -- "$cur"))
    fi
}}
complete -o default -F _ghostls ghostls
'''


# -- zsh ---------------------------------------------------------------------------------------------
def _zsh_item(name: str, help: str) -> str:
    text = f"{name}:{help}".replace("\\", "\\\\")
    name_part, _, help_part = text.partition(":")
    return "'" + (name_part + ":" + help_part.replace(":", "\\:")).replace("'", "'\\''") + "'"


def _zsh(tree: Command) -> str:
    known = "|".join(c.path for c in _walk(tree) if c.path)
    values = []
    levels = []
    for c in _walk(tree):
        for option in c.options:
            if option.takes_value:
                cases = "|".join(f'"{c.path} {flag}"' for flag in option.flags)
                action = f"compadd -- {' '.join(option.choices)}" if option.choices else "_files"
                values.append(f"        ({cases}) {action}; return ;;")
        opts = " ".join(_zsh_item(flag, option.help) for option in c.options for flag in option.flags)
        subs = " ".join([*(_zsh_item(n, s.help) for n, s in c.subcommands.items()), *c.choices])
        levels.append(f'        ("{c.path}") opts=({opts}); subs=({subs}) ;;')
    return f'''#compdef ghostls
# zsh completion for ghostls. Load it with: source <(ghostls completions zsh)   (after compinit)
# or save it as _ghostls in a folder on $fpath.
_ghostls() {{
    local cmd="" i cur=${{words[CURRENT]}} prev=${{words[CURRENT-1]}}
    local -a opts subs
    # The subcommand path typed so far, e.g. /model/convert.
    for ((i = 2; i < CURRENT; i++)); do
        case "$cmd/${{words[i]}}" in
            ({known}) cmd="$cmd/${{words[i]}}" ;;
        esac
    done
    case "$cmd $prev" in
{chr(10).join(values)}
    esac
    case "$cmd" in
{chr(10).join(levels)}
    esac
    if [[ $cur == -* ]]; then
        _describe -t options option opts
    elif (( ${{#subs}} )); then
        _describe -t commands command subs
    else
        _files
    fi
}}
if [[ $funcstack[1] == _ghostls ]]; then
    _ghostls "$@"
else
    compdef _ghostls ghostls
fi
'''


# -- fish --------------------------------------------------------------------------------------------
def _fish_quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _fish(tree: Command) -> str:
    lines = ["# fish completion for ghostls. Load it with: ghostls completions fish | source",
             "# or save it as ~/.config/fish/completions/ghostls.fish.",
             "complete -c ghostls -f"]
    for c in _walk(tree):
        names = c.path.strip("/").split("/") if c.path else []
        if not names:
            here = "__fish_use_subcommand"
        else:
            # In `c` and not yet in one of its subcommands.
            here = f"__fish_seen_subcommand_from {names[-1]}"
            if c.subcommands:
                here += f"; and not __fish_seen_subcommand_from {' '.join(c.subcommands)}"
        for name, sub in c.subcommands.items():
            lines.append(f"complete -c ghostls -n {_fish_quote(here)} -a {name} -d {_fish_quote(sub.help)}")
        if c.choices:
            lines.append(f"complete -c ghostls -n {_fish_quote(here)} -a {_fish_quote(' '.join(c.choices))}")
        elif c.takes_path:
            lines.append(f"complete -c ghostls -n {_fish_quote(here)} -F")  # a file argument
        for option in c.options:
            flags = " ".join(f"-l {f[2:]}" if f.startswith("--") else f"-s {f[1:]}" for f in option.flags)
            value = ""
            if option.takes_value:
                value = f" -x -a {_fish_quote(' '.join(option.choices))}" if option.choices else " -r -F"
            described = f" -d {_fish_quote(option.help)}" if option.help else ""
            lines.append(f"complete -c ghostls -n {_fish_quote(here)} {flags}{value}{described}")
    return "\n".join(lines) + "\n"
