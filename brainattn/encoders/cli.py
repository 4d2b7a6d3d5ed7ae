"""``brainattn fit``, ``brainattn evaluate``, ``brainattn predict``."""

from __future__ import annotations

from pathlib import Path

import typer

from brainattn.options import (
    existing_dir,
    existing_file,
    in_range,
    positive,
    seed_option,
    writable,
)

_DATA = "an Algonauts-layout data set root"
_RUN = "a run folder written by brainattn fit"


def register(app: typer.Typer) -> None:
    @app.command("fit")
    def fit(
        data: Path = typer.Argument(..., help="Data set folder (Algonauts-2023 / NSD layout).",
                                    callback=existing_dir(_DATA)),
        model: str = typer.Option("transformer", "--model", help="transformer | ridge | factorized"),
        subject: str = typer.Option("subj01", "--subject",
                                    help="Subject, or several comma-separated (one fit each)."),
        backbone: str = typer.Option("gabor", "--backbone",
                                     help="'gabor' (embedded, no weights) or a timm ViT name, "
                                          "e.g. vit_base_patch14_dinov2; comma-separated "
                                          "for several fits"),
        weights: Path = typer.Option(None, "--weights", callback=existing_file("a weights file"),
                                     help="Local weights file (.safetensors, or .pth loaded "
                                          "with weights_only=True); never downloaded."),
        layer: str = typer.Option("-1", "--layer", help="ViT block whose tokens are used "
                                  "(comma-separated for several fits)."),
        stream: str = typer.Option("block", "--stream", help="block (output) | q (qkv query)"),
        image_size: int = typer.Option(None, "--image-size", min=16, max=4096, help="px (default 224)"),
        queries: str = typer.Option("rois", "--queries", help="rois | hemis | vertices | hybrid (per-vertex queries in prf-visualrois, ROI queries elsewhere)"),
        roi_families: str = typer.Option(None, "--roi-families",
                                         help="Comma-separated ROI families for the queries, in "
                                              "priority order (default: all but streams)."),
        preset: str = typer.Option(None, "--preset",
                                   help="cpu: the small transformer for machines without CUDA "
                                        "(width 128, 8 heads, ffn 256, pRF bias, batch 32, lr "
                                        "2e-3; brainattn.encoders.transformer.CPU_PRESET). "
                                        "Options given explicitly win."),
        prf_bias: bool = typer.Option(None, "--prf-bias/--no-prf-bias",
                                      help="Learn a Gaussian pRF prior (default off)."),
        prf_lr: float = typer.Option(5.0, "--prf-lr", callback=positive,
                                     help="Learning rate of the pRF prior as a multiple of "
                                          "--lr (default 5; > 0)."),
        epochs: int = typer.Option(None, "--epochs", min=1, max=100_000),
        batch_size: int = typer.Option(None, "--batch-size", min=1, max=1_000_000),
        lr: float = typer.Option(None, "--lr", callback=positive, help="Learning rate (> 0)."),
        width: int = typer.Option(None, "--width", min=1, max=65_536, help="Decoder width (default 768)."),
        heads: int = typer.Option(None, "--heads", min=1, max=1024, help="Attention heads (default 16)."),
        ffn: int = typer.Option(None, "--ffn", min=1, max=1_048_576, help="Feed-forward width (default 1024)."),
        layers: int = typer.Option(1, "--layers", min=1, max=64),
        dropout: float = typer.Option(0.1, "--dropout", callback=in_range(0, 1, high_open=True),
                                      help="Dropout probability, in [0, 1)."),
        patience: int = typer.Option(5, "--patience", min=1, max=100_000,
                                     help="Early-stopping patience (epochs)."),
        pool: str = typer.Option("mean", "--pool", help="ridge features: mean | pca"),
        n_components: int = typer.Option(256, "--n-components", min=1, max=100_000, help="ridge PCA size"),
        val_fraction: float = typer.Option(0.1, "--val-fraction",
                                           callback=in_range(0, 0.5, low_open=True, high_open=True),
                                           help="Share of images for validation, in (0, 0.5)."),
        test_fraction: float = typer.Option(0.1, "--test-fraction",
                                            callback=in_range(0, 0.5, low_open=True, high_open=True),
                                            help="Share of images held out for the test, in (0, 0.5)."),
        seed: int = seed_option(0, "Random seed of the split, initialisation and batches."),
        permutations: int = typer.Option(1000, "--permutations", min=0, max=1_000_000,
                                         help="Permutations of the test images for each vertex's "
                                              "p-value in scores.nc (0: no significance test)."),
        bootstrap: int = typer.Option(1000, "--bootstrap", min=1, max=1_000_000,
                                      help="Bootstrap resamples of the test images for the 95% "
                                           "intervals of the ROI medians."),
        fdr: float = typer.Option(0.05, "--fdr", callback=in_range(0, 1, low_open=True, high_open=True),
                                  help="False discovery rate of 'significant' "
                                  "(Benjamini-Hochberg q-values)."),
        device: str = typer.Option("auto", "--device"),
        cache: Path = typer.Option(None, "--cache", help="Feature cache folder "
                                   "(default $BRAINATTN_CACHE or ~/.cache/brainattn/features)."),
        out: Path = typer.Option(..., "--out", callback=writable, help="Run folder to write."),
        overwrite: bool = typer.Option(False, "--overwrite"),
        resume: bool = typer.Option(False, "--resume", help="Continue an interrupted fit in --out."),
        drop_nonfinite: bool = typer.Option(
            False, "--drop-nonfinite",
            help="Drop vertices whose betas hold NaN/Inf (read once; evaluate and predict drop "
                 "the same ones) instead of refusing the data set."),
        allow_empty_rois: bool = typer.Option(
            False, "--allow-empty-rois",
            help="Accept ROIs named in a mapping file that have no vertex (they get no query)."),
    ):
        """Fit an encoding model and write model, scores.nc, attention.nc, history, log.

        Under ``torchrun --nproc_per_node=N -m brainattn fit ...`` the fit is data-parallel
        (DDP); several subjects/backbones/layers run one fit per GPU (see
        brainattn.encoders.multifit). Without CUDA a transformer fit of the published size
        says how long it will take before it starts; --preset cpu is the small model."""
        import itertools

        from brainattn.encoders import distributed as D
        from brainattn.encoders.multifit import fit_many
        from brainattn.encoders.run import fit_run
        from brainattn.errors import ConfigError

        def split(v):
            return [x.strip() for x in str(v).split(",") if x.strip()]

        try:
            layer_list = [int(x) for x in split(layer)]
        except ValueError as exc:
            raise ConfigError(f"--layer {layer!r}: expected integers, comma-separated") from exc
        fits = [{"subject": s, "backbone": b, "layer": ly} for s, b, ly in
                itertools.product(split(subject), split(backbone), layer_list)]
        if not fits:
            raise ConfigError("--subject/--backbone/--layer: give at least one value each")
        common = dict(overwrite=overwrite, resume=resume, cache_dir=cache, model=model,
                      weights=weights, stream=stream,
                      image_size=image_size, queries=queries, roi_families=roi_families,
                      preset=preset, prf_bias=prf_bias, prf_lr=prf_lr, epochs=epochs,
                      batch_size=batch_size, lr=lr, width=width,
                      heads=heads, ffn=ffn, layers=layers, dropout=dropout, patience=patience,
                      pool=pool, n_components=n_components, val_fraction=val_fraction,
                      test_fraction=test_fraction, seed=seed, permutations=permutations,
                      bootstrap=bootstrap, fdr=fdr, device=device, drop_nonfinite=drop_nonfinite,
                      allow_empty_rois=allow_empty_rois)
        if len(fits) > 1:
            from brainattn.analyses import runs as sweep

            world = D.env_world()
            one_process = world is None or world[1] == 1  # torchrun ranks run only their share
            if one_process:  # all layers of a (subject, backbone) from one backbone pass
                sweep.prefill_layer_sweep(data, fits, common, log=typer.echo)
            for path in fit_many(data, out, fits, log=typer.echo, **common):
                typer.echo(f"wrote {path}")
            if one_process:
                for path in sweep.summarise_layer_sweep(out, fits, log=typer.echo):
                    typer.echo(f"wrote {path}")
            return
        dist = D.init_distributed(device)
        # no collective teardown on an error: destroying an NCCL group while a peer waits in a
        # collective can hang; the process exits and torchrun stops the other ranks
        fit_run(data, out, **common, **fits[0])
        D.shutdown()
        if dist is None or dist.is_main:
            typer.echo(f"wrote {out}")

    @app.command("evaluate")
    def evaluate(
        run: Path = typer.Argument(..., help="Run folder written by brainattn fit.",
                                   callback=existing_dir(_RUN)),
        data: Path = typer.Option(None, "--data", callback=existing_dir(_DATA),
                                  help="Data set (default: the one fitted on)."),
        device: str = typer.Option("auto", "--device"),
        cache: Path = typer.Option(None, "--cache"),
    ):
        """Score a fitted run on its held-out test images; rewrites RUN/scores.nc."""
        from brainattn.encoders.run import evaluate_run

        evaluate_run(run, data=data, cache_dir=cache, device=device)

    @app.command("predict")
    def predict(
        run: Path = typer.Argument(..., help="Run folder written by brainattn fit.",
                                   callback=existing_dir(_RUN)),
        images: list[Path] = typer.Argument(None, help="Image files."),
        out: Path = typer.Option(None, "--out", callback=writable,
                                 help="NetCDF to write (default RUN/predictions.nc)."),
        algonauts_submission: Path = typer.Option(
            None, "--algonauts-submission",
            help="Instead of IMAGES: predict the subject's test_split/test_images and write the "
                 "Algonauts-2023 files DIR/<subject>/{lh,rh}_pred_test.npy."),
        data: Path = typer.Option(None, "--data", callback=existing_dir(_DATA),
                                  help="Data set for --algonauts-submission (default: the one "
                                       "fitted on)."),
        cache: Path = typer.Option(None, "--cache", help="Feature cache folder."),
        overwrite: bool = typer.Option(False, "--overwrite"),
        device: str = typer.Option("auto", "--device"),
    ):
        """Predict vertex responses to new images, or write an Algonauts-2023 submission."""
        from brainattn.errors import ConfigError

        if algonauts_submission is not None:
            if images:
                raise ConfigError("predict: give IMAGES or --algonauts-submission DIR, not both")
            from brainattn.analyses.runs import write_run_submission

            for path in write_run_submission(run, algonauts_submission, data=data,
                                             cache_dir=cache, device=device,
                                             overwrite=overwrite):
                typer.echo(f"wrote {path}")
            return
        if not images:
            raise ConfigError("predict: give at least one image file (or --algonauts-submission "
                              "DIR)")
        from brainattn.encoders.run import predict_run

        path = predict_run(run, [str(p) for p in images], out, overwrite=overwrite, device=device)
        typer.echo(f"wrote {path}")
