"""`keras-ssl-list`: the installed methods, backbones, datasets and augmentation stacks.

Broken plugins are listed too, marked BROKEN with the distribution that
declares them, its version and the exception, so a failing third-party
package is easy to spot. The binary has no flags of its own.
"""

from __future__ import annotations

from keras_ssl import registry
from keras_ssl.cli_errors import run_binary


def format_registry(reg: registry.Registry) -> list[str]:
    """One line per entry of a registry: name, origin, and the error if broken.

    Args:
      reg: The registry to list.

    Returns:
      The lines, a heading first.
    """
    lines = [f"{reg.kind}s ({reg.group}):"]
    entries = reg.entries()
    if not entries:
        lines.append("  (none installed)")
    for entry in entries:
        if entry.error is None:
            lines.append(f"  {entry.name:<20} {entry.origin}")
        else:
            error = f"{type(entry.error).__name__}: {entry.error}"
            lines.append(f"  {entry.name:<20} BROKEN  {entry.origin}\n      {error}")
    return lines


def main(argv):
    """Prints every registry (absl main).

    Args:
      argv: Positional arguments left by absl (none are used).
    """
    del argv
    for reg in registry.ALL:
        print("\n".join(format_registry(reg)))
    print("datasets also accepted: any TFDS name (e.g. cifar10) and folder:/path/to/images")


def run():
    """Console-script entry point of `keras-ssl-list`."""
    run_binary("keras-ssl-list", main)


if __name__ == "__main__":
    run()
