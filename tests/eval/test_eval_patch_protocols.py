"""`ssl-eval retrieve retrieve.protocol=cmd` (CMD's fine-grained retrieval) and `ssl-eval knn-pairs` (the
nearest-neighbour file CoTAP trains with) from the command line."""

import json

import numpy as np

from eval.cli import main
from ssl_distill.data.neighbors import read_neighbors

TINY = ["model.img_size=32", "model.patch_size=8", "model.embed_dim=32", "model.depth=1", "model.num_heads=2", "model.weights=none"]


def test_cmd_retrieval_protocol_prints_its_query_and_gallery_sizes(tmp_path, capsys):
    args = [*TINY, "data.limit=45", "run.progress=false", f"run.cache_dir={tmp_path / 'cache'}"]
    code = main(["retrieve", "--backbone", "vit_tiny_patch16_224", "--data", "shapes_fine", "--out", str(tmp_path),
                 *args, "retrieve.protocol=cmd", "retrieve.query_split=test", "retrieve.ks=[1,5]"])
    assert code == 0
    record = json.loads((tmp_path / "retrieve-shapes_fine.json").read_text())
    assert record["details"]["queries"] == 5 and record["details"]["gallery_size"] == 45 + 40  # 45 test: 0, 9, .., 36
    assert record["details"]["depth"] == 85 and record["details"]["ap_over"] == "retrieved"
    assert set(record["metrics"]) == {"recall@1", "recall@5", "map@100"}
    printed = capsys.readouterr().out
    assert "queries" in printed and "gallery" in printed and "| 5 " in printed.replace("  ", " ")
    assert main(["retrieve", "--backbone", "vit_tiny_patch16_224", "--data", "shapes_fine", *args, "retrieve.protocol=ratio"]) == 2
    assert "retrieve.protocol=ratio is not one of: splits, cmd" in capsys.readouterr().err


def test_knn_pairs_writes_the_nns_file_and_reports_label_agreement(tmp_path, capsys):
    file = tmp_path / "nns" / "nns_random_shapes_scenes_train_None_32.npz"
    args = [*TINY, "data.limit=30", "run.progress=false", f"run.cache_dir={tmp_path / 'cache'}"]
    code = main(["knn-pairs", "--backbone", "vit_tiny_patch16_224", "--data", "shapes_scenes", "--out", str(tmp_path),
                 *args, "knn_pairs.top=6", f"knn_pairs.file={file}", "knn_pairs.report_ks=[1,5]"])
    assert code == 0
    nns = read_neighbors(file, 30)
    assert nns.shape == (30, 6) and np.array_equal(nns[:, 0], np.arange(30))
    side = read_neighbors(tmp_path / "knn-pairs-shapes_scenes.nns.npz", 30)
    assert np.array_equal(side, nns)
    record = json.loads((tmp_path / "knn-pairs-shapes_scenes.json").read_text())
    assert record["details"]["file"] == str(file.resolve()) and record["config"]["knn_pairs"]["top"] == 6
    assert set(record["metrics"]) == {"label_agreement@1", "label_agreement@5"}
    assert "label_agreement" in capsys.readouterr().out
