"""images/create_gif.py: one frame per epoch, in numeric order, at the asked frame time."""
import os

import numpy as np
from PIL import Image

from conftest import ROOT, assert_one_line_error

SCRIPT = 'images/create_gif.py'


def frames(folder, epochs):
    os.makedirs(folder, exist_ok=True)
    for e in epochs:     # a solid colour encodes the epoch
        Image.fromarray(np.full((24, 32, 3), (10 * e, 255 - 10 * e, 0), np.uint8)).save(os.path.join(folder, f'epoch_{e}.png'))


def read_gif(path):
    im = Image.open(path)
    out = []
    for i in range(im.n_frames):
        im.seek(i)
        out.append((int(np.asarray(im.convert('RGB'))[0, 0, 0]), im.info['duration']))
    return out


def test_frames_in_numeric_order_at_the_given_duration(run, tmp_path):
    frames(tmp_path / 'run', [0, 1, 2, 10, 11, 3])
    p = run(SCRIPT, '--images', 'run', '--out', 'out.gif', '--duration', 150)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip().splitlines()[-1] == 'out.gif'
    got = read_gif(tmp_path / 'out.gif')
    assert [abs(r - 10 * e) <= 4 for (r, _), e in zip(got, [0, 1, 2, 3, 10, 11], strict=True)] == [True] * 6
    assert [d for _, d in got] == [150] * 6


def test_from_the_root_and_from_inside_images_after_training(run, tmp_path):
    assert run('train.py', '--epoch', 2, '--samples', 200, '--eval-every', 0).returncode == 0
    p = run(SCRIPT, '--images', 'images')
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip().splitlines()[-1] == os.path.join('images', 'nce.gif')
    assert len(read_gif(tmp_path / 'images/nce.gif')) == 2
    assert [d for _, d in read_gif(tmp_path / 'images/nce.gif')] == [200, 200]   # 0.2 s, as the original meant
    p = run(SCRIPT, '--images', '.', '--out', 'inside.gif', cwd=tmp_path / 'images')
    assert p.returncode == 0 and len(read_gif(tmp_path / 'images/inside.gif')) == 2


def test_default_folder_is_the_scripts_own(run, tmp_path):
    """With no --images it reads the frames beside the script, wherever it is called from."""
    p = run(SCRIPT, '--out', str(tmp_path / 'x.gif'))
    has_frames = any(f.startswith('epoch_') for f in os.listdir(os.path.join(ROOT, 'images')))
    if has_frames:
        assert p.returncode == 0
    else:
        assert_one_line_error(p)
        assert os.path.join(ROOT, 'images') in p.stderr


def test_errors(run, tmp_path):
    assert_one_line_error(run(SCRIPT, '--images', 'nothing'))
    frames(tmp_path / 'run', [0, 1])
    (tmp_path / 'afile').write_text('x')
    assert_one_line_error(run(SCRIPT, '--images', 'run', '--out', 'afile/out.gif'))
    assert_one_line_error(run(SCRIPT, '--images', 'run', '--duration', 0))
    (tmp_path / 'run/epoch_2.png').write_bytes(b'not a png')
    p = run(SCRIPT, '--images', 'run', '--out', 'x.gif')
    assert_one_line_error(p)
    assert 'epoch_2.png' in p.stderr and not (tmp_path / 'x.gif').exists()


def test_a_small_gif_scales_skips_and_shares_one_palette(run, tmp_path):
    """--scale shrinks every frame, --every keeps every N-th frame and the last, --colors puts all frames on
    one palette: the colours survive within the palette's precision."""
    frames(tmp_path / 'run', range(6))
    p = run(SCRIPT, '--images', 'run', '--out', 'small.gif', '--scale', 0.5, '--every', 2, '--colors', 16)
    assert p.returncode == 0, p.stderr
    im = Image.open(tmp_path / 'small.gif')
    assert (im.width, im.height) == (16, 12)
    got = read_gif(tmp_path / 'small.gif')
    assert [abs(r - 10 * e) <= 8 for (r, _), e in zip(got, [0, 2, 4, 5], strict=True)] == [True] * 4
    for bad in (('--scale', 0), ('--scale', 1.5), ('--every', 0), ('--colors', 1), ('--colors', 300)):
        assert_one_line_error(run(SCRIPT, '--images', 'run', '--out', 'bad.gif', *bad))
    assert not (tmp_path / 'bad.gif').exists()
