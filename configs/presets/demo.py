"""`demo`: a 2-core CPU, minutes. 32x32 procedural faces, latent diffusion on 8x8x4 latents of a
small autoencoder, a small UNet (`demo,pixel`: in pixels). What it gives is in the README and
docs/, not here."""

import ml_collections


def apply(config: ml_collections.ConfigDict) -> None:
    """The demo's values, over configs/default.py."""
    # Latent space: at an equal time budget it gave more identity-consistent samples than pixel
    # space (benchmarks/pixel_vs_latent.py).
    config.diffusion.space = "latent"

    config.data.data_dir = "~/.cache/diffusion_jax/tfds"
    config.data.resolution = 32
    config.data.num_train_identities = 200
    config.data.images_per_train_identity = 20
    # 50 held-out identities per verification fold: with fewer, which identities were held out
    # moved a fold's accuracy too much.
    config.data.num_heldout_identities = 500
    config.data.images_per_heldout_identity = 12
    config.data.pairs_per_fold = 30  # 600 verification pairs
    config.data.worker_count = 0

    config.encoder.architecture = "iresnet_small"
    config.encoder.input_resolution = 32
    config.encoder.head = "cosface"
    config.encoder.margin_scale = 32.0
    config.encoder.train.batch_size = 64
    config.encoder.train.num_steps = 1000
    config.encoder.train.learning_rate = 2e-3
    config.encoder.train.warmup_steps = 100
    config.encoder.train.log_every_steps = 50
    config.encoder.train.checkpoint_every_steps = 500

    # The held-out identities split in two (evaluate.validation_fraction): settings are chosen on
    # validation, test is reported. 300 matched and 300 mismatched pairs per fold over each part's
    # 250 identities (25 per fold) average out the noise of the pair sample.
    config.evaluate.verification_sets = ("validation@300", "test@300")
    # Two more recogniser seeds for the report's spread: the recognisers' 8 minutes more fit in the
    # demo's 30 (docs/experiments/2026-12-06-demo-split).
    config.evaluate.spread_seeds = (3, 4)

    config.autoencoder.block_out_channels = (16, 32, 64)  # 32x32 -> 8x8 latents
    config.autoencoder.layers_per_block = 1
    config.autoencoder.norm_num_groups = 8
    config.autoencoder.discriminator_weight = 0.0  # minutes of CPU: L1 + identity perceptual + KL
    config.autoencoder.scale_batches = 16
    config.autoencoder.train.batch_size = 32
    config.autoencoder.train.num_steps = 600
    config.autoencoder.train.learning_rate = 1e-3
    config.autoencoder.train.warmup_steps = 100
    config.autoencoder.train.log_every_steps = 50
    config.autoencoder.train.checkpoint_every_steps = 250

    config.model.base_channels = 64
    config.model.channel_mults = (1, 2, 2)
    config.model.num_res_blocks = 1
    config.model.attention_resolutions = (8,)
    config.model.head_channels = 32
    config.model.dropout = 0.0
    config.model.stem = "space_to_depth"
    config.model.num_groups = 16
    config.model.dtype = "float32"  # bfloat16 is slower than float32 on CPUs

    # Faster convergence for a minutes-long run: cosine schedule, v-prediction, min-SNR weighting.
    config.diffusion.beta_schedule = "cosine"
    config.diffusion.prediction_type = "v"
    config.diffusion.loss_weighting = "min_snr"

    config.train.batch_size = 32
    config.train.num_steps = 1500
    config.train.learning_rate = 1e-3
    config.train.warmup_steps = 100
    config.train.ema_decay = 0.995
    config.train.log_every_steps = 25
    config.train.checkpoint_every_steps = 250
    config.train.figures_every_steps = 0  # figures only at the end

    # DPM-Solver++(2M) at 10 steps for the figures and the generated dataset, without guidance
    # (scale 1: one conditional UNet pass per step). Chosen by --mode=sampler_sweep on
    # validation (docs/experiments/2026-12-06-samplers.md): the fewest passes whose identity
    # consistency and Frechet distance are no worse than DDIM-50's beyond the noise, and whose
    # recogniser ratio equals DDIM-50's (0.846; 15 steps 0.856, within the noise), for a fifth
    # of DDIM-50's passes; it loses some diversity. At this budget the synthetic recogniser
    # gained more from diversity than from guidance's identity consistency (README, "The claim,
    # end to end").
    config.sample.sampler = "dpm_solver_pp_2m"
    config.sample.num_steps = 10
    config.sample.guidance_scale = 1.0
    config.sample.identities = (0, 1, 2, 3, 4, 5)
    config.sample.samples_per_identity = 6

    # As many identities and images per identity as the real training set (200 x 20); with
    # recognizer.match_images_per_identity the real recogniser trains on 20 of each too. Chosen
    # on validation against 10 per identity, the same models upstream: ratio 0.842 +- 0.010
    # against 0.827 +- 0.011 over three recogniser seeds, both accuracies higher
    # (docs/experiments/2026-12-06-demo-fewer-passes).
    config.generate.num_identities = 200
    config.generate.images_per_identity = 20
    config.generate.identities_per_shard = 25
    # Identities where the encoder's real faces lie (a Gaussian fitted to the training identities'
    # centres), each further from every training identity and every other new one than most
    # training identities are from their nearest neighbour.
    config.generate.identity_source = "gaussian"
    config.generate.candidates_per_identity = 8
    config.generate.max_identity_similarity = 0.55
    config.generate.max_training_similarity = 0.55
    config.generate.min_judge_similarity = 0.2
    # Image-level leakage: no kept image nearer (judge cosine) to a real training photo than the
    # 99th percentile of held-out validation faces, new real people, to their nearest training
    # photo (0.838 under the demo's judge: docs/experiments/2026-12-06-validation-levers.md).
    config.generate.max_training_image_similarity = 0.84

    config.recognizer.num_steps = 500  # both recognisers: 8 epochs of 200 x 20 images
    # Both recognisers' images are shifted and colour-jittered; the jitter because the generated
    # faces vary less in brightness, contrast and saturation than real photos (README, "The
    # claim, end to end").
    config.recognizer.max_shift = 2
    config.recognizer.color_jitter = 0.2


def apply_latent(config: ml_collections.ConfigDict) -> None:
    """8x8x4 latents of 32x32 faces: a full-resolution stem, attention at 8x8 and 4x4."""
    config.model.stem = "conv"
    config.model.attention_resolutions = (8, 4)
