"""Our R-50 DeformDETR (91 classes, as the official checkpoints) has the official model's
transformer and heads: same number of state-dict entries and the same multiset of shapes,
for the plain, refine and two-stage builds listed in the reference facts."""

from collections import Counter

import pytest

from tests.helpers.models import VARIANTS, build_r50

# official aliases of the top-level heads (saved twice), and the torchvision backbone
_SKIP_OFFICIAL = ('backbone.', 'transformer.decoder.bbox_embed', 'transformer.decoder.class_embed')


@pytest.mark.parametrize('variant', list(VARIANTS))
def test_same_shapes_as_official(variant: str, official_listing) -> None:
    official = Counter(
        tuple(shape)
        for key, shape in official_listing[variant].items()
        if not key.startswith(_SKIP_OFFICIAL)
    )
    model = build_r50(variant, num_classes=91)
    ours = Counter(
        tuple(value.shape)
        for key, value in model.state_dict().items()
        if not key.startswith('backbone.')
    )
    assert ours == official
