import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from models.checkpoint import DEFAULT_WORDS, build_models, load_checkpoint
from models.config import named_config
from models.tokenizer import build_tokenizer
from models.train import data, decoder, losses, upsample
from models.train.cli import main
from models.train.loop import (
    ema_decay,
    learning_rate,
    mixed_precision,
    state_path,
    train_stage,
    update_ema,
)
from models.train.shapes import caption_words
from models.train.stage import PoolSizes, StageSettings, TrainingData
from models.train.train import ALL_STAGES, STAGES, TrainOptions, train

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the machine's cores are shared; tiny networks gain nothing from more
    yield
    torch.set_num_threads(threads)


def tiny_models():
    torch.manual_seed(0)
    return build_models(named_config("tiny"), build_tokenizer(sorted({*DEFAULT_WORDS, *caption_words()})))


@torch.no_grad()
def as_if_trained(decoder: torch.nn.Module) -> None:
    """Give a fresh decoder's zero-initialised layers values (the same every call), so that its output
    depends on its inputs."""
    generator = torch.Generator().manual_seed(0)
    for parameter in decoder.parameters():
        if not parameter.any():
            parameter.normal_(0, 0.05, generator=generator)


def tiny_data() -> TrainingData:
    training_data = TrainingData(0, PoolSizes(8, 4, 2), cache=None)
    # 64 px crops of 1024 px pictures instead of 256: the same network and loss, a sixteenth of the work.
    training_data.__dict__["crops1024"] = data.crop_pool(data.training_scenes(2, 5), 1024, 64, 0, cache=None)
    return training_data


@pytest.mark.parametrize("name", list(STAGES))
def test_each_stage_fits_a_fixed_batch(name: str) -> None:
    """The loss of one batch, with its noise and dropout held fixed, falls fast: gradients reach the
    trained network through the whole loss."""
    models = tiny_models()
    if name == "decoder_caption":  # it tunes a trained decoder's caption path; a fresh decoder outputs 0
        as_if_trained(models.decoder)
    stage = STAGES[name](models, tiny_data(), CPU, reference=tiny_models())
    stage.module.train().requires_grad_(False)
    trained = stage.parameters()
    for parameter in trained:
        parameter.requires_grad_(True)
    optimizer = torch.optim.Adam(trained, lr=2e-3)
    batch = stage.make_batch(4, random.Random(0))
    values = []
    for _ in range(20):
        loss, _ = stage.loss(batch, torch.Generator().manual_seed(0))
        loss.mean().backward()
        optimizer.step()
        optimizer.zero_grad()
        values.append(float(loss.detach().mean()))
    # The caption path moves only what the frozen decoder makes of the caption: slower (a path that gets
    # no gradient keeps the loss exactly where it was).
    assert values[-1] < (0.99 if name == "decoder_caption" else 0.8) * values[0], values
    # Only the stage's parameters train: the rest (the frozen CLIP included) get no gradients.
    moved = {id(p) for p in trained}
    for other, network in models.components().items():
        for parameter_name, parameter in network.named_parameters():
            if id(parameter) not in moved:
                assert parameter.grad is None, (other, parameter_name)


def test_the_text_projection_stage_moves_z_t_and_leaves_the_token_states() -> None:
    """clip_projection trains CLIP's text projection alone: the token states that the prior and the decoder
    read stay as they were, only the text embedding z_t changes, and template captions' z_t are held."""
    models = tiny_models()
    stage = STAGES["clip_projection"](models, tiny_data(), CPU)
    assert stage.module is models.clip and stage.parameters() == [models.clip.text_projection]
    batch = stage.make_batch(4, random.Random(0))
    before = models.clip.encode_text(batch["ids"])
    assert stage.loss(batch, torch.Generator())[1]["drift"] == pytest.approx(0, abs=1e-6)
    with torch.no_grad():
        models.clip.text_projection.add_(torch.randn_like(models.clip.text_projection) * 0.1)
    after = models.clip.encode_text(batch["ids"])
    assert torch.equal(before.states, after.states)
    assert not torch.allclose(before.embeds, after.embeds)
    # the template captions' z_t are held where the projection started: moving it costs
    assert stage.loss(batch, torch.Generator())[1]["drift"] > 1e-3


def test_the_anchored_decoder_holds_its_captionless_response_off_the_pictures() -> None:
    """decoder_anchored adds a distillation term: on caption-less rows whose z_i is turned away from its
    picture (as the text diff turns it), the decoder's guided output is held to the --init decoder's."""
    with pytest.raises(ValueError, match="--init"):
        STAGES["decoder_anchored"](tiny_models(), tiny_data(), CPU)
    models, reference = tiny_models(), tiny_models()  # the same seed: equal weights, as after --init
    stage = STAGES["decoder_anchored"](models, tiny_data(), CPU, reference)
    seen = []
    teacher = stage.teacher
    stage.teacher = lambda *inputs, **inpaint: seen.append(inputs) or teacher(*inputs, **inpaint)
    batch = stage.make_batch(4, random.Random(0))
    loss, parts = stage.loss(batch, torch.Generator().manual_seed(0))
    assert parts["drift"] == pytest.approx(0, abs=1e-10)
    _, _, embeds, _, text_mask = seen[0]
    assert not text_mask.any()  # no caption
    turned, null = embeds.chunk(2)  # the guided output: conditioned and null rows
    assert not null.any()
    z_i = batch["image_embeds"]
    assert torch.allclose(turned.norm(dim=-1), z_i.norm(dim=-1), atol=1e-5)  # z_i's length, turned
    assert (torch.nn.functional.cosine_similarity(turned, z_i) < 0.9999).all()
    with torch.no_grad():
        for parameter in models.decoder.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.01)
    loss, parts = stage.loss(batch, torch.Generator().manual_seed(0))
    assert parts["drift"] > 1e-6
    loss.backward()  # the reference stays as it was: no gradient reaches it
    assert all(p.grad is None and not p.requires_grad for p in reference.decoder.parameters())
    assert all(p.grad is not None for p in models.decoder.parameters() if p.requires_grad)


def test_the_caption_stage_trains_the_caption_path_alone_from_an_identity_start() -> None:
    """decoder_caption adds a caption encoder to the --init decoder (config and weights) and trains only
    the caption path, on captioned rows: the rest of the decoder gets no gradient."""
    with pytest.raises(ValueError, match="--init"):
        STAGES["decoder_caption"](tiny_models(), tiny_data(), CPU)
    models, reference = tiny_models(), tiny_models()
    as_if_trained(models.decoder)
    as_if_trained(reference.decoder)
    plain = models.decoder
    stage = STAGES["decoder_caption"](models, tiny_data(), CPU, reference)
    assert stage.module is models.decoder is not plain
    assert models.config.decoder.caption_layers == models.decoder.config.caption_layers > 0
    trained = set(map(id, stage.parameters()))
    path = {"caption_encoder", "text_proj", "text_norm"}
    for name, parameter in models.decoder.named_parameters():
        assert (id(parameter) in trained) == (name.split(".")[0] in path), name
    batch = stage.make_batch(16, random.Random(0))
    seen = []
    forward = models.decoder.forward
    models.decoder.forward = lambda *inputs, **inpaint: seen.append(inputs) or forward(*inputs, **inpaint)
    stage.loss(batch, torch.Generator().manual_seed(0))
    _, _, image_embeds, _, text_mask = seen[0]
    assert text_mask.any(dim=1).all()  # no caption dropped: dropped rows would not train the path
    dropped = int((~image_embeds.any(dim=1)).sum())  # z_i often dropped: the caption alone must draw it
    assert 4 <= dropped <= 12, dropped
    # The target: the --init decoder, at the same x_t, t and z_i, reading a template caption of the facts.
    assert not torch.equal(batch["template_text_states"], batch["text_states"])
    models.decoder.forward = forward
    same_words = {**batch, **{name: batch[f"template_{name}"] for name in ("text_states", "text_mask")}}
    # Both terms vanish when the decoder reads the template's own words: the output, and what each
    # attention block hands on (the hint).
    same = stage.loss(same_words, torch.Generator().manual_seed(0))[1]
    other = stage.loss(batch, torch.Generator().manual_seed(0))[1]
    for term in ("template", "hint"):
        assert same[term].abs().max() < 1e-6 < other[term].mean(), term
    assert not any(module._forward_hooks for module in models.decoder.modules())  # the hint's hooks are gone
    assert torch.equal(
        STAGES["decoder_caption"](models, tiny_data(), CPU, reference)
        .module.caption_encoder.resblocks[0]
        .attn.out_proj.weight,
        models.decoder.caption_encoder.resblocks[0].attn.out_proj.weight,
    )  # a decoder that has an encoder (a resumed run) keeps it


@pytest.mark.parametrize("name", ["decoder", "sr256", "sr1024"])
def test_denoisers_learn_the_noise_of_the_noised_picture(name: str, monkeypatch) -> None:
    """The loss sees x_t = √ᾱ x0 + √(1−ᾱ) ε of the batch's own pictures and the component's schedule."""
    models = tiny_models()
    stage = STAGES[name](models, tiny_data(), CPU)
    seen = {}

    def spy(schedule, output, x0, x_t, t, noise):
        seen.update(schedule=schedule, output=output, x0=x0, x_t=x_t, t=t, noise=noise)
        return losses.diffusion_loss(schedule, output, x0, x_t, t, noise)

    monkeypatch.setattr(decoder if name == "decoder" else upsample, "diffusion_loss", spy)
    batch = stage.make_batch(3, random.Random(1))
    stage.loss(batch, torch.Generator().manual_seed(2))
    pictures = batch["images"] if name == "decoder" else batch["high"]
    assert seen["x0"] is pictures and pictures.min() >= -1 and pictures.max() <= 1
    assert seen["schedule"].config == getattr(models.config, f"{name}_diffusion")
    alpha_bar = seen["schedule"].alpha_bar[seen["t"]].view(-1, 1, 1, 1)
    assert torch.allclose(seen["x_t"], alpha_bar.sqrt() * pictures + (1 - alpha_bar).sqrt() * seen["noise"])
    assert seen["noise"].std() == pytest.approx(1.0, abs=0.1)
    assert seen["output"].shape[1] == getattr(models.config, name).out_channels


def test_decoder_masks_mark_a_rectangle_to_repaint() -> None:
    masks = decoder.random_keep_masks(64, 64, torch.Generator().manual_seed(0), "cpu")
    assert masks.shape == (64, 1, 64, 64) and set(masks.unique().tolist()) == {0.0, 1.0}
    repainted = 1 - masks.mean((1, 2, 3))
    assert repainted.min() > 0.03 and repainted.max() < 0.6
    corners = torch.stack([masks[:, 0, 0, 0], masks[:, 0, 0, -1], masks[:, 0, -1, 0], masks[:, 0, -1, -1]], 1)
    assert 0.3 < (corners == 0).any(1).float().mean() < 0.9  # about half touch a corner


def test_upsampler_inputs_are_degraded_quarter_size_pictures() -> None:
    high = data.to_model_range(data.crop_pool(data.training_scenes(3, 0), 256, 64, 0, cache=None))
    generator = torch.Generator().manual_seed(0)
    blurred = upsample.blur_corruption(high, generator)
    box = torch.nn.functional.avg_pool2d(high, 4)
    assert blurred.shape == (3, 3, 16, 16)
    assert 0 < (blurred - box).abs().mean() < 0.1  # blurred, but the same picture
    mixed = upsample.mixed_degradation(high, generator)
    assert mixed.shape == (3, 3, 16, 16) and mixed.min() >= -1 and mixed.max() <= 1
    assert (mixed - box).abs().mean() < 0.2


def settings(steps: int) -> StageSettings:
    return StageSettings(steps=steps, batch_size=3, lr=1e-3, warmup=2)


def test_resuming_continues_exactly_where_it_stopped(tmp_path: Path) -> None:
    straight = tiny_models()
    train_stage(
        STAGES["prior"](straight, tiny_data(), CPU),
        settings(4),
        seed=1,
        state_dir=tmp_path / "a",
        resume=False,
        progress=False,
    )
    resumed = tiny_models()
    for steps in (2, 4):
        result = train_stage(
            STAGES["prior"](resumed, tiny_data(), CPU),
            settings(steps),
            seed=1,
            state_dir=tmp_path / "b",
            resume=True,
            progress=False,
        )
    assert (result.start_step, result.steps) == (2, 4)
    assert torch.load(state_path(tmp_path / "b", "prior"), weights_only=True)["step"] == 4
    for name, tensor in straight.prior.state_dict().items():
        assert torch.allclose(tensor, resumed.prior.state_dict()[name], atol=1e-6), name


def test_without_a_progress_bar_every_save_logs_the_step_and_loss(tmp_path: Path, caplog) -> None:
    caplog.set_level("INFO", logger="models.train.loop")
    train_stage(
        STAGES["prior"](tiny_models(), tiny_data(), CPU),
        settings(5),
        seed=1,
        state_dir=tmp_path,
        resume=False,
        save_every=2,
        progress=False,
    )
    lines = [r.getMessage() for r in caplog.records if r.name == "models.train.loop"]
    assert [line.split(":")[0] for line in lines] == ["prior step 2", "prior step 4"]
    assert all("loss" in line and "mse" in line for line in lines)


def test_one_command_trains_every_stage_into_a_loadable_checkpoint(tmp_path: Path, capsys) -> None:
    out = tmp_path / "checkpoint"
    arguments = [
        "train",
        "--out",
        str(out),
        "--config",
        "tiny",
        "--steps",
        "1",
        "--batch-size",
        "2",
        "--pool",
        "4",
        "--cache",
        str(tmp_path / "cache"),
        "--workers",
        "1",
        "--no-progress",
    ]
    assert main(arguments) == 0
    printed = capsys.readouterr().out
    for name in ALL_STAGES:
        assert f"{name}: steps 0->1" in printed
    models = load_checkpoint(out)
    assert set(models.components()) == set(ALL_STAGES)
    assert not list(out.glob("*.pt"))  # the training state is kept apart, never shipped
    state_dir = tmp_path / "checkpoint.train"
    for name in ALL_STAGES:
        state = torch.load(state_path(state_dir, name), weights_only=True)
        shipped = load_file(out / f"{name}.safetensors")
        # The checkpoint holds the EMA weights, which differ from the raw ones after training.
        assert all(torch.equal(shipped[k], v) for k, v in state["ema"].items()), name
        assert any(not torch.equal(shipped[k], v) for k, v in state["module"].items()), name
    # Resuming one stage with more steps continues from its saved step.
    assert main([*arguments[:5], "--stage", "decoder", "--steps", "2", *arguments[7:], "--resume"]) == 0
    assert "decoder: steps 1->2" in capsys.readouterr().out
    assert torch.load(state_path(state_dir, "decoder"), weights_only=True)["step"] == 2
    load_checkpoint(out)


def test_the_seed_reproduces_the_checkpoint(tmp_path: Path) -> None:
    def run(folder: str, seed: int) -> dict[str, torch.Tensor]:
        options = TrainOptions(
            out=tmp_path / folder,
            config="tiny",
            stages=("clip", "prior"),
            steps=2,
            batch_size=3,
            seed=seed,
            pools=PoolSizes(6, 2, 2),
            cache=tmp_path / "cache",
            progress=False,
        )
        train(options)
        return load_file(tmp_path / folder / "prior.safetensors")

    first, again, other = run("a", 0), run("b", 0), run("c", 1)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in first)


def test_resume_refuses_another_seed(tmp_path: Path) -> None:
    options = TrainOptions(
        out=tmp_path / "a",
        config="tiny",
        stages=("prior",),
        steps=1,
        batch_size=2,
        pools=PoolSizes(4, 2, 2),
        cache=None,
        progress=False,
    )
    train(options)
    options.seed, options.resume = 5, True
    with pytest.raises(ValueError, match="same --seed"):
        train(options)


def test_ema_moves_a_fraction_toward_the_weights_and_warms_up() -> None:
    module, ema = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    before = ema.weight.detach().clone()
    update_ema(ema, module, decay=0.9)
    assert torch.allclose(ema.weight, 0.9 * before + 0.1 * module.weight.detach())
    warm = StageSettings(steps=10, batch_size=1, lr=1.0, warmup=4, ema_decay=0.999)
    assert ema_decay(warm, 0) == pytest.approx(0.1) and ema_decay(warm, 10**6) == 0.999
    assert [learning_rate(warm, s) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]


def test_matrix_products_train_in_bf16_where_the_cpu_has_bf16_kernels() -> None:
    layer = torch.nn.Linear(4, 4)
    with mixed_precision(torch.device("cpu")):
        out = layer(torch.randn(2, 4))
    native = torch.ops.mkldnn._is_mkldnn_bf16_supported()  # AVX-512 BF16 / AMX
    assert out.dtype == (torch.bfloat16 if native else torch.float32)
    assert layer.weight.dtype == torch.float32  # the weights (and AdamW's state) stay float32
