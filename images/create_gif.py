"""Make a GIF of one run's per-epoch frames (epoch_0.png, epoch_1.png, ... in numeric order).

$ python images/create_gif.py                     # frames in images/, writes images/nce.gif
$ cd images && python create_gif.py --out rings.gif --duration 100
"""
import argparse
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def main(argv=None):
    p = argparse.ArgumentParser(description='Make a GIF of the epoch_<N>.png frames written by train.py.')
    p.add_argument('--images', default=HERE, help='folder holding the frames (default: the folder of this script)')
    p.add_argument('--out', help='GIF to write (default: <images>/nce.gif)')
    p.add_argument('--duration', type=float, default=200, help='milliseconds per frame')
    p.add_argument('--loop', type=int, default=0, help='times to play; 0 loops forever')
    args = p.parse_args(argv)
    if not args.duration > 0:
        p.error(f'argument --duration: must be positive, got {args.duration}')
    out = args.out or os.path.join(args.images, 'nce.gif')
    frames = sorted((int(m.group(1)), f) for f in (os.listdir(args.images) if os.path.isdir(args.images) else [])
                    if (m := re.fullmatch(r'epoch_(\d+)\.png', f)))
    if not frames:
        p.error(f'no frames epoch_<N>.png in {args.images}; train first (python train.py) or pass --images')
    if not out.lower().endswith('.gif'):
        p.error(f'argument --out: {out} must end in .gif')
    sys.path.insert(0, os.path.dirname(HERE))
    from util import atomic_write, unwritable
    problem = unwritable(os.path.dirname(os.path.abspath(out)))
    if problem or os.path.isdir(out):
        p.error(f'argument --out: cannot write {out}: {problem or "it is a folder"}')

    import imageio.v3 as iio
    import numpy as np
    images = []
    for _, f in frames:
        try:
            images.append(iio.imread(os.path.join(args.images, f))[..., :3])   # RGB: GIF has no alpha
        except Exception as e:
            p.error(f'cannot read frame {os.path.join(args.images, f)}: {type(e).__name__}')
        if images[-1].shape != images[0].shape:
            p.error(f'frame {f} is {images[-1].shape[1]}x{images[-1].shape[0]}, unlike the first frame: frames of different runs?')
    # imageio's pillow plugin takes the duration in milliseconds per frame
    atomic_write(out, lambda tmp: iio.imwrite(tmp, np.stack(images), extension='.gif',
                                              duration=args.duration, loop=args.loop))
    print(f'{len(images)} frames, epochs {frames[0][0]}..{frames[-1][0]}, {args.duration:g} ms each')
    print(out)


if __name__ == '__main__':
    main()
