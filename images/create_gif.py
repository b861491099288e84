"""Make a GIF of one run's per-epoch frames (epoch_0.png, epoch_1.png, ... in numeric order).

$ python images/create_gif.py                     # frames in images/, writes images/nce.gif
$ cd images && python create_gif.py --out rings.gif --duration 100
$ python images/create_gif.py --scale 0.75 --colors 64 --every 2    # small enough for a web page
"""
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))      # the repo's modules, from wherever the script is run


def main(argv=None):
    from cli import parser
    p = parser(__doc__)
    p.add_argument('--images', default=HERE, help='folder holding the frames (default: the folder of this script)')
    p.add_argument('--out', help='GIF to write (default: <images>/nce.gif)')
    p.add_argument('--duration', type=float, default=200, help='milliseconds per frame')
    p.add_argument('--loop', type=int, default=0, help='times to play; 0 loops forever')
    p.add_argument('--scale', type=float, default=1.0, help='resize each frame by this factor (0 < scale <= 1)')
    p.add_argument('--every', type=int, default=1, help='keep every N-th frame, and always the last')
    p.add_argument('--colors', type=int, default=0,
                   help='one palette of this many colours (2 to 256) for all frames, with pillow\'s optimisation; '
                        '0: a palette per frame, as imageio writes it')
    args = p.parse_args(argv)
    if not args.duration > 0:
        p.error(f'argument --duration: must be positive, got {args.duration}')
    if not 0 < args.scale <= 1:
        p.error(f'argument --scale: must be in (0, 1], got {args.scale}')
    if args.every < 1:
        p.error(f'argument --every: must be at least 1, got {args.every}')
    if args.colors and not 2 <= args.colors <= 256:
        p.error(f'argument --colors: must be 0 or 2 to 256, got {args.colors}')
    out = args.out or os.path.join(args.images, 'nce.gif')
    frames = sorted((int(m.group(1)), f) for f in (os.listdir(args.images) if os.path.isdir(args.images) else [])
                    if (m := re.fullmatch(r'epoch_(\d+)\.png', f)))
    if not frames:
        p.error(f'no frames epoch_<N>.png in {args.images}; train first (python train.py) or pass --images')
    frames = frames[::args.every] + ([frames[-1]] if (len(frames) - 1) % args.every else [])
    if not out.lower().endswith('.gif'):
        p.error(f'argument --out: {out} must end in .gif')
    from files import atomic_write, holder, lock_file, not_a_file, unwritable
    problem = unwritable(os.path.dirname(os.path.abspath(out))) or not_a_file(out)
    if problem:
        p.error(f'argument --out: cannot write {out}: {problem}')
    pid = holder(lock_file(args.images, folder=True))
    if pid:
        p.error(f'a run (process {pid}) is still writing the frames in {args.images}; make the GIF when it has ended')

    import imageio.v3 as iio
    import numpy as np
    images = []
    for _, f in frames:
        if not os.path.isfile(os.path.join(args.images, f)):    # a FIFO would block the read for ever
            p.error(f'frame {os.path.join(args.images, f)} is not a regular file')
        try:
            images.append(iio.imread(os.path.join(args.images, f))[..., :3])   # RGB: GIF has no alpha
        except Exception as e:
            p.error(f'cannot read frame {os.path.join(args.images, f)}: {type(e).__name__}')
        if images[-1].shape != images[0].shape:
            p.error(f'frame {f} is {images[-1].shape[1]}x{images[-1].shape[0]}, unlike the first frame: frames of different runs?')
    if args.scale == 1 and not args.colors:
        # imageio's pillow plugin takes the duration in milliseconds per frame
        atomic_write(out, lambda tmp: iio.imwrite(tmp, np.stack(images), extension='.gif',
                                                  duration=args.duration, loop=args.loop))
    else:
        ims = small_frames(images, args)
        atomic_write(out, lambda tmp: ims[0].save(tmp, format='GIF', save_all=True, append_images=ims[1:],
                                                  duration=args.duration, loop=args.loop, optimize=bool(args.colors)))
    print(f'{len(images)} frames, epochs {frames[0][0]}..{frames[-1][0]}, {args.duration:g} ms each')
    print(out)


def small_frames(images, args):
    """The frames as PIL images resized by args.scale and, with args.colors, on one palette shared by every frame:
    taken from a strip of up to 8 frames spread over the run, so the colours of early and late densities are both
    in it. With one palette, pillow's optimize stores only the part of each frame that changed."""
    from PIL import Image
    ims = [Image.fromarray(a) for a in images]
    if args.scale != 1:
        size = (max(1, round(ims[0].width * args.scale)), max(1, round(ims[0].height * args.scale)))
        ims = [im.resize(size, Image.Resampling.LANCZOS) for im in ims]
    if args.colors:
        sample = ims[::max(1, len(ims) // 8)]
        strip = Image.new('RGB', (ims[0].width, ims[0].height * len(sample)))
        for i, im in enumerate(sample):
            strip.paste(im, (0, i * im.height))
        palette = strip.quantize(args.colors, method=Image.Quantize.MEDIANCUT)
        ims = [im.quantize(palette=palette, dither=Image.Dither.NONE) for im in ims]
    return ims


if __name__ == '__main__':
    main()
