"""What a person reads at the terminal before any search: config mistakes, --help, the port rule."""

from __future__ import annotations

import argparse
import os
import stat
import sys

import pytest
import torch
import yaml
from safetensors import safe_open

from zsearch.cli import build_parser, main


def _subparsers(parser: argparse.ArgumentParser, prefix: str = "") -> dict[str, argparse.ArgumentParser]:
    """Every sub-command, nested ones too ('comfyui install'), by its full name."""
    found = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found[f"{prefix}{name}"] = sub
                found.update(_subparsers(sub, f"{prefix}{name} "))
    return found


def test_every_subcommand_has_a_description_and_help_for_each_argument():
    commands = _subparsers(build_parser())
    assert {"run", "best", "validate", "dashboard", "render", "report", "review", "inspect", "merge",
            "comfyui install"} <= set(commands)
    for name, parser in commands.items():
        assert parser.description and len(parser.description) > 20, name
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help, f"zsearch {name}: {'/'.join(action.option_strings) or action.dest} has no help"


@pytest.mark.parametrize("command", ["dashboard", "review"])
def test_dashboard_and_review_follow_one_port_rule(command, capsys):
    parser = build_parser()
    assert parser.parse_args([command, "c.yaml", "--port", "0"]).port == 0  # any free port
    assert parser.parse_args([command, "c.yaml", "--port", "65535"]).port == 65535
    assert parser.parse_args([command, "c.yaml"]).port == 8080
    for bad in ("65536", "-1", "http"):
        with pytest.raises(SystemExit) as exit_:
            parser.parse_args([command, "c.yaml", "--port", bad])
        assert exit_.value.code == 2
        err = capsys.readouterr().err
        assert "1-65535" in err and "0 for any free one" in err and err.count("\n") == 1, err


@pytest.mark.parametrize("change, expected", [
    (lambda d: d.update(refernces=d.pop("references")), "unknown key 'refernces'; did you mean 'references'?"),
    (lambda d: d.update(promts=d.pop("prompts")), "unknown key 'promts'; did you mean 'prompts'?"),
    (lambda d: d["loras"][0].update(rato=d["loras"][0].pop("ratio")), "unknown key 'loras.0.rato'; did you mean 'ratio'?"),
    (lambda d: d.update(seds=[1]), "unknown key 'seds'; did you mean 'seeds'?"),
    (lambda d: d.update(sampler="tpe"), "unknown key 'sampler'; did you mean 'search.sampler'?"),
    (lambda d: d.update(render={"stepz": 4}), "unknown key 'render.stepz'; did you mean 'steps'?"),
    (lambda d: d.update(render={"qqq": 4}), "known keys here: steps, width, height"),
])
def test_a_misspelt_key_is_named_with_a_did_you_mean(tmp_path, capsys, change, expected):
    data = {"name": "x", "loras": [{"path": "a.safetensors", "ratio": 1.0, "search": {"ratio": [0, 1]}}],
            "references": "refs", "prompts": ["a cat"]}
    change(data)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err, err
    assert "is required" not in err  # the misspelling is the cause, not a missing key


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permission bits")
@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077])
def test_outputs_written_atomically_follow_the_umask(tmp_path, umask):
    from zsearch.lora.write import save_lora
    from zsearch.util.atomic import write_text_atomic
    before = os.umask(umask)
    try:
        write_text_atomic(tmp_path / "best.yaml", "a: 1\n")
        save_lora({"x": torch.zeros(2)}, tmp_path / "best.safetensors", metadata={})
        plain = tmp_path / "plain.txt"
        plain.write_text("as open() makes it")
    finally:
        os.umask(before)
    expected = stat.S_IMODE(plain.stat().st_mode)
    assert expected == 0o666 & ~umask
    for name in ("best.yaml", "best.safetensors"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == expected, name
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_a_merge_names_its_sources_by_file_and_hash_not_folder(tmp_path, capsys):
    import hashlib
    import json

    from zsearch.lora.blocks import all_modules
    from zsearch.lora.synth import make_random_lora, save_in_format
    folder = tmp_path / "private" / "alice" / "loras"
    folder.mkdir(parents=True)
    paths = [m.path for m in all_modules()][:6]
    source = save_in_format(make_random_lora(32, 2, paths, seed=3), folder / "style.safetensors", "ai-toolkit")
    out = tmp_path / "shared" / "merged.safetensors"
    assert main(["merge", str(source), "--ratio", "0.7", "-o", str(out)]) == 0
    with safe_open(str(out), "pt") as f:
        metadata = f.metadata()
    assert not any("private" in value or "alice" in value or str(tmp_path) in value for value in metadata.values())
    assert json.loads(metadata["zsearch.sources"]) == [
        {"file": "style.safetensors", "sha256": hashlib.sha256(source.read_bytes()).hexdigest()}]
    assert yaml.safe_load(metadata["zsearch.lora.recipe"])["loras"][0]["path"] == "style.safetensors"
    capsys.readouterr()
    # inspect tells how it was made, in text and in JSON
    assert main(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert "made by zsearch" in text and "(`zsearch merge`)" in text
    assert "recipe  style.safetensors  ratio 0.7" in text
    assert f"source  style.safetensors  sha256 {hashlib.sha256(source.read_bytes()).hexdigest()[:16]}" in text
    assert main(["inspect", "--json", str(out)]) == 0
    info = json.loads(capsys.readouterr().out)["files"][0]
    assert info["provenance"]["lora.recipe"]["loras"][0] == {"path": "style.safetensors", "ratio": 0.7}
    # a file zsearch did not write has no provenance
    assert main(["inspect", "--json", str(source)]) == 0
    assert json.loads(capsys.readouterr().out)["files"][0]["provenance"] is None


def test_inspect_alpha_text_agrees_with_json(tmp_path, capsys):
    import json

    from zsearch.lora.blocks import all_modules
    from zsearch.lora.synth import make_random_lora, save_in_format
    paths = [m.path for m in all_modules()][:4]
    for fmt, alpha, rank in (("kohya", 8.0, 8), ("ai-toolkit", None, 8), ("kohya", 2.0, 4)):
        lora = make_random_lora(32, rank, paths, seed=1, alpha=alpha) if alpha else make_random_lora(32, rank, paths)
        path = save_in_format(lora, tmp_path / f"{fmt}-{rank}-{alpha}.safetensors", fmt)
        assert main(["inspect", "--json", str(path)]) == 0
        (entry,) = json.loads(capsys.readouterr().out)["files"][0]["alpha"]
        assert entry["alpha"] == pytest.approx(entry["scale"] * entry["rank"])
        assert entry["scale"] == pytest.approx((alpha or rank) / rank)
        assert main(["inspect", str(path)]) == 0
        line = next(l for l in capsys.readouterr().out.splitlines() if l.strip().startswith("alpha"))
        assert f"{entry['alpha']:g} at rank {rank} (scale {entry['scale']:g})" in line, line
