"""Every path under a run's workdir, in one place: modules ask a `RunLayout`, they never spell a
path under a workdir themselves.

    WORKDIR/
      encoder/                 the conditioning identity encoder's training run
        model/                 its export (unless config.encoder.checkpoint names one)
      judge/encoder/           the judge encoder's training run (encoder.seed + 1)
        model/                 its export (unless config.generate.judge_encoder names one)
      autoencoder/             the latent-diffusion autoencoder's training run
        model/                 its export (unless config.autoencoder.checkpoint names one)
      checkpoints/ config.json the diffusion model's training run (TensorBoard events beside)
      figures/                 the diffusion model's four figures
      samples/step_<N>/        --mode=sample
      generated/               the generated dataset (unless config.generate.output_dir is set)
      recognizers/<name>/encoder/   a recogniser's training run; model/ its export
      report/                  the pipeline's report (report.json, report.md, figures)
      encoder_report/  sample_report/  evaluation/      the other reports
      pipeline/<stage>.json    the record of each completed pipeline stage
      sweep/                   --mode=scaling_sweep, laid out as a workdir of its own:
        generated/             its generated dataset (the sweep's largest point)
        recognizers/<point>/encoder/   a point's synthetic recogniser; model/ its export
        costs/<name>.json      wall seconds spent on the generation and on each recogniser
        scaling.json scaling.png       the results (unless config.sweep.out_dir is set)
      sampler_sweep/           --mode=sampler_sweep, laid out as a workdir of its own:
        quality/<setting>_seed<S>.json  a sampler setting's sample-quality measures
        generated/<setting>/   a ratio setting's generated dataset
        recognizers/<setting>/encoder/ its synthetic recogniser; model/ its export
        costs/<name>.json      wall seconds spent on each generation and recogniser
        sampler_sweep.json sampler_sweep.png  the results (unless config.sampler_sweep.out_dir)
      cache/                   values derived from the data, reused across stages
      workdir.lock             the lock of the run using the workdir (core.workdir_lock)

A training run's directory holds `checkpoints/` (Orbax), `config.json` and TensorBoard events;
its export (`model/`) is what later stages load. Every path is a `paths.Path`, local or `gs://`.
"""

import dataclasses

import ml_collections

from diffusion_jax.core import paths


@dataclasses.dataclass(frozen=True)
class TrainedModel:
    """A model trained by the project: where its training run lives and where it is exported
    (the export may be given instead of trained, e.g. `config.encoder.checkpoint`)."""

    run_dir: paths.Path
    export_dir: paths.Path
    given: bool = False  # the export comes from the config, not from `run_dir`

    @property
    def checkpoints(self) -> paths.Path:
        return self.run_dir / "checkpoints"


@dataclasses.dataclass(frozen=True)
class RunLayout:
    """The paths of one run. `encoder_checkpoint`, `judge_encoder`, `autoencoder_checkpoint` and
    `generated_dir` replace the default locations when set (see `from_config`)."""

    root: paths.Path
    encoder_checkpoint: str = ""
    judge_encoder: str = ""
    autoencoder_checkpoint: str = ""
    generated_dir: str = ""

    @classmethod
    def from_config(cls, workdir: paths.PathLike, config: ml_collections.ConfigDict) -> "RunLayout":
        """The layout of `workdir` with the exports and output directory `config` names."""
        return cls(
            root=paths.resolve(workdir),
            encoder_checkpoint=config.encoder.checkpoint,
            judge_encoder=config.generate.judge_encoder,
            autoencoder_checkpoint=config.autoencoder.checkpoint,
            generated_dir=config.generate.output_dir,
        )

    def _model(self, run_dir: paths.Path, given: str) -> TrainedModel:
        if given:
            return TrainedModel(run_dir, paths.resolve(given), given=True)
        return TrainedModel(run_dir, run_dir / "model")

    # ------------------------------------------------------------------------- trained models
    @property
    def encoder(self) -> TrainedModel:
        return self._model(self.root / "encoder", self.encoder_checkpoint)

    @property
    def judge(self) -> TrainedModel:
        return self._model(self.root / "judge" / "encoder", self.judge_encoder)

    @property
    def autoencoder(self) -> TrainedModel:
        return self._model(self.root / "autoencoder", self.autoencoder_checkpoint)

    @property
    def diffusion(self) -> TrainedModel:
        """The diffusion model: trained in the workdir itself; `export_dir` holds its
        checkpoints, which are what sampling loads."""
        return TrainedModel(self.root, self.root / "checkpoints")

    @property
    def recognizers(self) -> paths.Path:
        return self.root / "recognizers"

    def recognizer(self, name: str) -> TrainedModel:
        return self._model(self.recognizers / name / "encoder", "")

    # ------------------------------------------------------------------------- outputs
    @property
    def figures(self) -> paths.Path:
        return self.root / "figures"

    def samples(self, step: int) -> paths.Path:
        return self.root / "samples" / f"step_{step}"

    @property
    def generated(self) -> paths.Path:
        return paths.resolve(self.generated_dir) if self.generated_dir else self.root / "generated"

    @property
    def report(self) -> paths.Path:
        return self.root / "report"

    @property
    def encoder_report(self) -> paths.Path:
        return self.root / "encoder_report"

    @property
    def sample_report(self) -> paths.Path:
        return self.root / "sample_report"

    @property
    def evaluation(self) -> paths.Path:
        return self.root / "evaluation"

    @property
    def sweep(self) -> "RunLayout":
        """`--mode=scaling_sweep`'s directory, WORKDIR/sweep, laid out as a workdir: its
        `generated` dataset and its `recognizer(point)`s."""
        return RunLayout(self.root / "sweep")

    def sweep_cost(self, name: str) -> paths.Path:
        """The wall seconds `--mode=scaling_sweep` spent on `name` ("generation" or a point's
        recogniser), summed over the runs that worked on it."""
        return self.sweep.cost(name)

    @property
    def sampler_sweep(self) -> "RunLayout":
        """`--mode=sampler_sweep`'s directory, WORKDIR/sampler_sweep, laid out as a workdir: its
        `recognizer(setting)`s, `quality(setting)` and `cost(name)` records; a ratio setting's
        dataset is `generated / setting`."""
        return RunLayout(self.root / "sampler_sweep")

    def cost(self, name: str) -> paths.Path:
        """In a sweep's layout: the wall seconds spent on `name`, summed over the runs that
        worked on it."""
        return self.root / "costs" / f"{name}.json"

    def quality(self, setting: str) -> paths.Path:
        """In the sampler sweep's layout: the sample-quality measures of a sampler setting."""
        return self.root / "quality" / f"{setting}.json"

    def stage_record(self, stage: str) -> paths.Path:
        return self.root / "pipeline" / f"{stage}.json"

    @property
    def cache(self) -> paths.Path:
        return self.root / "cache"

    @property
    def lock(self) -> paths.Path:
        """The workdir's lock: a locked file, or a lease object on Cloud Storage."""
        return self.root / "workdir.lock"
