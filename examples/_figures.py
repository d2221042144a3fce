"""Plot plumbing shared by the example scripts: matplotlib is optional."""
import os


def pyplot():
    """matplotlib.pyplot on the non-interactive backend, or None (with a hint) when absent."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed (pip install 'spad[analysis]'): no figure")
        return None
    return plt


def save(fig, path, dpi=120):
    fig.tight_layout()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, dpi=dpi)
    print(f"wrote {os.path.relpath(path)}")
