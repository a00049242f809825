import json


def emit(command, data: dict, *, as_json: bool) -> None:
    """Print what a command made: JSON for scripts, or readable lines."""
    if as_json:
        command.stdout.write(json.dumps(data, indent=2, default=str))
        return
    for key, value in data.items():
        command.stdout.write(f"{key}: {value}")
