"""``inference.json``: a fitted stain normaliser restored without its target image, and a
damaged record refused in one line."""

import numpy as np
import pytest
import torch

from sassl_core.config import validate
from sassl_core.errors import UserError
from sassl_core.plugins import default_plugins
from sassl_core.train.inference_meta import StainRecord, read_inference_record, restore_stain, stain_record
from sassl_core.train.inputs import fit_stain_transform
from tests.fixtures.he_images import synthetic_he


@pytest.mark.parametrize("name", ["reinhard", "macenko"])
def test_a_recorded_stain_normaliser_transforms_like_the_fitted_one(tmp_path, name):
    from PIL import Image

    Image.fromarray(synthetic_he(64, seed=2)).save(tmp_path / "target.png")
    cfg = validate({"data": {"stain_norm": name, "stain_target": str(tmp_path / "target.png")}})
    plugins = default_plugins()
    fitted = fit_stain_transform(cfg, plugins)
    record = stain_record(cfg, fitted)
    assert record is not None and record.fitted  # the statistics fit() set
    (tmp_path / "target.png").unlink()  # not needed any more
    restored = restore_stain(StainRecord.model_validate_json(record.model_dump_json()), plugins)
    batch = torch.from_numpy(np.stack([synthetic_he(32, seed=s) for s in (5, 6)])).permute(0, 3, 1, 2).float() / 255
    torch.testing.assert_close(restored(batch), fitted(batch))


def test_a_damaged_record_is_one_line_naming_the_field(tmp_path):
    (tmp_path / "inference.json").write_text('{"format": 1, "sassl_version": "0.1.0", "stage": "finetune"}')
    with pytest.raises(UserError, match=r"inference.json: task: Field required$"):
        read_inference_record(tmp_path)
    (tmp_path / "inference.json").write_text("{not json")
    with pytest.raises(UserError, match=r"inference.json: \(top\): Invalid JSON"):
        read_inference_record(tmp_path)
