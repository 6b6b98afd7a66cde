"""Command line: ``python -m mmdet_deformdetr.datasets OUT_DIR [--seed S] [--num-train N] ...``."""

import argparse
import time

from .synthetic_shapes import ShapesConfig, generate_shapes_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description='Write the synthetic shapes COCO dataset.')
    parser.add_argument('out_dir')
    defaults = ShapesConfig()
    for name in ('seed', 'num_train', 'num_val', 'img_size', 'min_size', 'max_size', 'max_objects'):
        parser.add_argument(
            '--' + name.replace('_', '-'), type=int, default=getattr(defaults, name)
        )
    parser.add_argument('--overwrite', action='store_true')
    args = vars(parser.parse_args())
    out_dir, overwrite = args.pop('out_dir'), args.pop('overwrite')
    start = time.time()
    generate_shapes_dataset(out_dir, ShapesConfig(**args), overwrite=overwrite)
    print(f'dataset ready at {out_dir} ({time.time() - start:.1f} s)')


if __name__ == '__main__':
    main()
