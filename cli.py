"""What every script's command line says: an error in one line, help that lists a long choice once, and the notices
of a run that replaces another or resumes one with a changed flag."""
import argparse
import os
import sys
import textwrap

# what a --resume may change mid-run; everything else that defines the run must match the checkpoint (resume.py)
MUTABLE = ('lr', 'eval_every', 'no_plot', 'device')
LISTED = 6      # the width of a listed choice's name


class Formatter(argparse.HelpFormatter):
    """argparse's help, with a help string's own line breaks kept (a list of choices, a line each, its wrapped part
    indented under its text), and no line broken at a hyphen (nce-flow-narrow stays whole)."""

    def _split_lines(self, text, width):
        wrap = lambda t, w: textwrap.wrap(' '.join(t.split()), w, break_on_hyphens=False) or ['']
        out = []
        for part in text.splitlines():
            if not part.startswith(' '):
                out += wrap(part, width)
                continue
            name, _, about = part.strip().partition(' ')
            lines = wrap(about, width - LISTED - 3)
            out += [f'  {name:<{LISTED}} {lines[0]}'] + [' ' * (LISTED + 3) + line for line in lines[1:]]
        return out


def parser(doc, **kw):
    """An ArgumentParser whose description is the first paragraph of the script's docstring, whole, and whose errors
    are one line in argparse's words, then one line that points to --help, with exit code 2."""
    p = argparse.ArgumentParser(description=' '.join(doc.strip().split('\n\n')[0].split()), formatter_class=Formatter, **kw)

    def error(message):
        p.exit(2, f'{p.prog}: error: {message}\ntry: python {sys.argv[0] or p.prog} --help\n')
    p.error = error
    return p


def listed(choices, about=None):
    """A help string's list of choices, a line each, with what each one is where `about` says."""
    about = about or {}
    return '\n'.join(f'  {c:<{LISTED}}{about.get(c, "")}'.rstrip() for c in choices)


def replaced(ckpt_path, frames):
    """The line a fresh run prints before it replaces what a run left at ckpt_path and its frames (a list of paths),
    or None where there is nothing to replace."""
    if not os.path.exists(ckpt_path) and not frames:
        return None
    import files
    parts = []
    if os.path.exists(ckpt_path):
        try:
            ckpt = files.load_checkpoint(ckpt_path)
            a, history = ckpt['args'], ckpt['history']
            kl = next((h['kl'] for h in reversed(history) if isinstance(h, dict) and h.get('kl') is not None), None)
            parts.append(f'{ckpt_path} ({a.get("method", "nce")} on {a.get("dataset")}, {len(history)} epoch{"s" * (len(history) != 1)}'
                         + (f', last KL {kl:.4f})' if kl is not None else ', not evaluated)'))
        except (files.CheckpointError, AttributeError, KeyError, TypeError):
            parts.append(f'{ckpt_path} (not a checkpoint this script can read)')
    if frames:
        parts.append(f'{len(frames)} frames in {os.path.dirname(frames[0]) or "."}/')
    return 'replacing ' + ' and '.join(parts) + ', the run before this one'


def changes(old, args, epoch):
    """The flags of MUTABLE that a resumed run changes from its checkpoint's args (old, a dict), a line each:
    'lr 0.001 -> 0.5 from epoch 50'."""
    return [f'{k.replace("_", "-")} {old[k]} -> {getattr(args, k)} from epoch {epoch}' for k in MUTABLE
            if k in old and old[k] != getattr(args, k)]
