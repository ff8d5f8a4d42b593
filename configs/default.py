"""The shared default config: every key any preset or the unit tests' config sets, with its meaning.

The presets of configs/faces.py (configs/presets/) and the unit tests' config
(tests/configs/unit.py) start from `get_config()` and change values only; a key missing here is an
error there. As it is, this is the `base` preset in pixel space (`--config=configs/default.py`
loads it too). Results measured with these settings belong in docs/, not here.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.preset = "base"  # the preset's name as typed (configs/faces.py:PRESET[,SPACE])
    config.seed = 0  # the run's seed (model initialisation, data order, evaluation draws)

    # Training images.
    config.data = ml_collections.ConfigDict()
    # "procedural" (the embedded faces, rendered and prepared once as TFDS ArrayRecord in
    # data_dir), "image_folder" (path/<identity>/<image>, prepared once into data_dir), "recordio"
    # (an InsightFace train.rec at path, with train.idx beside it) or "tfds" (the train split of
    # the TFDS dataset named by path, prepared in data_dir).
    config.data.source = "procedural"
    config.data.path = ""  # image_folder: the root folder; recordio: the .rec file; tfds: a name
    config.data.data_dir = "~/tensorflow_datasets"  # where prepared datasets are kept
    config.data.resolution = 64  # images are square, this many pixels on a side
    config.data.image_policy = "resize"  # or "center_crop" (tasks/data/sources/image_decoding.py)
    config.data.strict = False  # image_folder: a bad file stops preparation, not skipped
    # procedural, image_folder: reusing a prepared dataset checks its files' sizes against the
    # listing its preparation wrote; True also checks their SHA-256 (reads all the data once a run).
    config.data.verify_prepared = False
    # Any source: train on the first identity labels only (-1: all) ...
    config.data.max_identities = -1
    # ... and on the first images (in stored order) of each (-1: all).
    config.data.max_images_per_identity = -1
    config.data.seed = 0  # procedural: the renderer's seed
    config.data.num_train_identities = 2000  # procedural: identities to train on
    config.data.images_per_train_identity = 50  # procedural: images of each training identity
    config.data.num_heldout_identities = 600  # procedural: identities of the verification pairs
    config.data.images_per_heldout_identity = 20  # procedural: images of each held-out identity
    # Procedural verification pairs per fold, matched and mismatched each (LFW's 300); with at
    # most (held-out images) / 40 per fold, no image repeats within a fold.
    config.data.pairs_per_fold = 300
    config.data.horizontal_flip = True  # mirror training images at random
    config.data.max_shift = 0  # random translation of training images, in pixels (0: none)
    # Random brightness, contrast and saturation factors in [1 - color_jitter, 1 + color_jitter]
    # (0: none); the recognisers' training sets take config.recognizer.color_jitter.
    config.data.color_jitter = 0.0
    config.data.worker_count = 4  # grain worker processes reading the data (0: in the caller)

    # What the diffusion model is conditioned on.
    config.condition = ml_collections.ConfigDict()
    # "encoder": the identity encoder's embedding of each training image (IDiff-Face);
    # "random_identity_table": a frozen random unit vector per training identity (no encoder).
    config.condition.source = "encoder"
    config.condition.dim = 512  # the condition's size; must equal encoder.embedding_dim
    config.condition.p_uncond = 0.1  # classifier-free guidance dropout of the whole condition
    config.condition.partial_dropout = 0.0  # IDiff-Face contextual partial dropout of components

    # The identity encoder (face recogniser): an IResNet trained with a margin-softmax head.
    config.encoder = ml_collections.ConfigDict()
    # An encoder directory (from `python -m diffusion_jax.convert` or a previous
    # --mode=train_encoder); empty: the main job trains one into WORKDIR/encoder first.
    config.encoder.checkpoint = ""
    config.encoder.architecture = "iresnet50"  # iresnet18/34/50/100 or iresnet_small
    config.encoder.input_resolution = 112  # images are resized to it (arcface_torch: 112)
    config.encoder.embedding_dim = 512  # the embedding's size
    config.encoder.dropout = 0.0  # dropout before the embedding layer
    config.encoder.head = "arcface"  # or "cosface", "combined" (insightface's margins)
    config.encoder.margins = ()  # (m1, m2, m3) overriding the head's preset
    config.encoder.margin_scale = 64.0  # the margin head's logit scale s
    config.encoder.seed = 0  # a judge encoder is the same recipe with another seed
    config.encoder.train = ml_collections.ConfigDict()  # as config.train, for the encoder
    config.encoder.train.batch_size = 256  # global, over all devices and hosts
    config.encoder.train.num_steps = 50_000  # optimiser steps
    config.encoder.train.learning_rate = 1e-3  # peak learning rate, after warmup
    config.encoder.train.lr_decay = "cosine"  # "none" or "cosine" (to zero at num_steps)
    config.encoder.train.warmup_steps = 1000  # linear warmup from zero
    config.encoder.train.weight_decay = 5e-4  # decoupled weight decay
    config.encoder.train.grad_clip_norm = 5.0  # global gradient-norm clipping
    config.encoder.train.ema_decay = 0.0  # the exported encoder uses the raw weights
    config.encoder.train.log_every_steps = 100  # metrics are logged this often
    config.encoder.train.checkpoint_every_steps = 5000  # checkpoints are saved this often
    config.encoder.train.keep_checkpoints = 2  # the newest ones kept

    # Verification and identity reports (--mode=evaluate_encoder) and sample grading.
    config.evaluate = ml_collections.ConfigDict()
    # Each entry is "heldout" (the embedded data's held-out pairs), "heldout@N" (N matched and N
    # mismatched pairs per fold drawn afresh over the held-out images: the same identities, more
    # pairs), "validation@N" / "test@N" (the same over the validation or the test part of the
    # held-out identities: choose settings on validation, report test), a path to an InsightFace
    # .bin (lfw.bin, cfp_fp.bin, agedb_30.bin), or "PAIRS_TXT:IMAGE_ROOT" for LFW's pairs.txt over
    # an identity folder.
    config.evaluate.verification_sets = ("heldout",)
    # The held-out identities' share in the validation part; the split is drawn from data.seed.
    config.evaluate.validation_fraction = 0.5
    # Further recogniser seeds for the report's spread: it trains a `real` and a `synthetic`
    # recogniser with each (recognizers/real_seed<S>, synthetic_seed<S>; only the seed differs from
    # the recognizers stage) and reports the ratio's mean and std over recognizer.seed and these.
    config.evaluate.spread_seeds = ()
    config.evaluate.flip_embeddings = True  # embedding of image + mirror, as insightface evaluates
    config.evaluate.nearest_identity_thresholds = (0.3, 0.5, 0.7)  # cos thresholds reported
    config.evaluate.batch_size = 256  # images per embedding batch
    # --mode=evaluate_samples: samples of the first identities graded by a judge encoder.
    config.evaluate.judge_encoder = ""  # an encoder directory other than the conditioning one
    config.evaluate.consistency_identities = 50  # the first training identities sampled
    config.evaluate.consistency_samples_per_identity = 4  # samples drawn for each
    # Real images of those identities the samples' Frechet distance is measured against.
    config.evaluate.real_images_per_identity = 8

    # The KL autoencoder of latent diffusion (config.diffusion.space == "latent"). Latents are
    # data.resolution / 2^(number of blocks - 1) on a side, with latent_channels channels.
    config.autoencoder = ml_collections.ConfigDict()
    # An autoencoder directory (from `python -m diffusion_jax.convert autoencoder_kl` or a previous
    # --mode=train_autoencoder), whose architecture must equal the fields below; empty: the main
    # job trains one into WORKDIR/autoencoder first.
    config.autoencoder.checkpoint = ""
    config.autoencoder.block_out_channels = (128, 256, 256)  # 64x64 -> 16x16 latents
    config.autoencoder.layers_per_block = 2  # ResNet blocks per resolution
    config.autoencoder.latent_channels = 4  # channels of the latents
    config.autoencoder.norm_num_groups = 32  # GroupNorm groups
    config.autoencoder.mid_block_add_attention = True  # self-attention in the middle block
    # Loss (see diffusion_jax/tasks/latent/autoencoder_losses.py): L1 + perceptual_weight * identity
    # perceptual distance (features of the identity encoder) + kl_weight * KL, plus
    # discriminator_weight * the hinge GAN's generator loss from discriminator_start_step on.
    # The L1 term is averaged over pixels, so latent-diffusion's kl_weight (L1 summed over
    # pixels) would be kl_weight / (H W C) here; this is a stronger, still small, pull.
    config.autoencoder.kl_weight = 1e-6
    config.autoencoder.perceptual_weight = 1.0  # 0: no perceptual term (and no encoder needed)
    config.autoencoder.discriminator_weight = 0.5  # 0: no discriminator
    config.autoencoder.discriminator_start_step = 20_000  # the GAN term's first step
    config.autoencoder.discriminator_layers = 3  # strided layers of the patch discriminator
    config.autoencoder.discriminator_channels = 64  # the discriminator's first layer's channels
    config.autoencoder.scale_batches = 32  # training batches the latent scale is estimated on
    config.autoencoder.train = ml_collections.ConfigDict()  # as config.train, for the autoencoder
    config.autoencoder.train.batch_size = 64  # global, over all devices and hosts
    config.autoencoder.train.num_steps = 100_000  # optimiser steps
    config.autoencoder.train.learning_rate = 1e-4  # peak learning rate, after warmup
    config.autoencoder.train.lr_decay = "none"  # or "cosine" (to zero at num_steps)
    config.autoencoder.train.warmup_steps = 1000  # linear warmup from zero
    config.autoencoder.train.weight_decay = 0.0  # decoupled weight decay
    config.autoencoder.train.grad_clip_norm = 1.0  # global gradient-norm clipping
    config.autoencoder.train.ema_decay = 0.0  # the exported autoencoder uses the raw weights
    config.autoencoder.train.log_every_steps = 100  # metrics are logged this often
    config.autoencoder.train.checkpoint_every_steps = 5000  # checkpoints are saved this often
    config.autoencoder.train.keep_checkpoints = 2  # the newest ones kept

    # The denoising UNet (ADM-style).
    config.model = ml_collections.ConfigDict()
    config.model.base_channels = 128  # channels at the first resolution
    config.model.channel_mults = (1, 2, 3, 4)  # base_channels multipliers, one per resolution
    config.model.num_res_blocks = 2  # ResNet blocks per resolution
    config.model.attention_resolutions = (16, 8)  # feature-map sizes with self-attention
    config.model.head_channels = 64  # channels per attention head
    config.model.dropout = 0.1  # dropout in the ResNet blocks
    config.model.cross_attention = False  # also attend to the condition, as num_cond_tokens tokens
    config.model.num_cond_tokens = 4  # tokens the condition is projected to (cross_attention)
    # "conv": a 3x3 convolution at full resolution; "space_to_depth": 2x2 pixels to channels
    # first, so the UNet runs at half the resolution.
    config.model.stem = "conv"
    config.model.num_groups = 32  # GroupNorm groups
    config.model.dtype = "bfloat16"  # compute dtype ("float32" or "bfloat16"); weights are float32

    config.diffusion = ml_collections.ConfigDict()
    # "pixel": the UNet denoises images; "latent": it denoises the scaled latents of
    # `config.autoencoder` (latent diffusion), and samples are decoded to images.
    config.diffusion.space = "pixel"
    config.diffusion.num_timesteps = 1000  # steps of the forward process
    config.diffusion.beta_schedule = "linear"  # or "scaled_linear", "cosine"
    config.diffusion.prediction_type = "eps"  # what the UNet predicts: "eps", "x0" or "v"
    config.diffusion.loss_weighting = "uniform"  # or "min_snr" (Hang et al. 2023)
    config.diffusion.min_snr_gamma = 5.0  # min_snr: the SNR the weights are clipped at

    # Training of the diffusion model.
    config.train = ml_collections.ConfigDict()
    config.train.batch_size = 128  # global, over all devices and hosts
    config.train.num_steps = 200_000  # optimiser steps
    config.train.learning_rate = 1e-4  # peak learning rate, after warmup
    config.train.lr_decay = "none"  # or "cosine" (to zero at num_steps)
    config.train.warmup_steps = 1000  # linear warmup from zero
    config.train.weight_decay = 0.0  # decoupled weight decay
    config.train.grad_clip_norm = 1.0  # global gradient-norm clipping
    config.train.ema_decay = 0.9999  # the EMA of the weights that samples use (sample.use_ema)
    config.train.log_every_steps = 100  # metrics are logged this often
    config.train.checkpoint_every_steps = 5000  # checkpoints are saved this often
    config.train.figures_every_steps = 20_000  # sample figures this often (0: at the end only)
    config.train.keep_checkpoints = 3  # the newest ones kept

    # Sampling for figures, `--mode=sample` and `--mode=generate`.
    config.sample = ml_collections.ConfigDict()
    config.sample.sampler = "ddim"  # or "ddpm", "dpm_solver_pp_2m", "dpm_solver_pp_3m"
    config.sample.num_steps = 50  # sampler steps
    config.sample.eta = 0.0  # ddim: 0 deterministic, 1 as ddpm
    config.sample.guidance_scale = 2.0  # classifier-free guidance (1: conditional only)
    config.sample.clip_x0 = True  # clip predicted images to [-1, 1] (pixel space)
    config.sample.use_ema = True  # sample with the EMA weights
    config.sample.identities = (0, 1, 2, 3, 4, 5, 6, 7)  # training identity labels to draw
    config.sample.samples_per_identity = 8  # samples drawn for each
    config.sample.checkpoint_step = -1  # -1: the latest checkpoint

    # --mode=generate: a synthetic dataset of new identities (diffusion_jax/tasks/generation/),
    # sampled with config.sample's sampler, steps, guidance and EMA choice.
    config.generate = ml_collections.ConfigDict()
    config.generate.output_dir = ""  # empty: WORKDIR/generated
    config.generate.seed = 0  # identities and sampler noise
    config.generate.num_identities = 10_000  # new identities
    config.generate.images_per_identity = 50  # images of each
    config.generate.identities_per_shard = 100  # identities per written shard (a unit of work)
    config.generate.batch_size = 64  # images per sampler call, split over the local devices
    # Where identities come from: "random" (unit vectors in the conditioning encoder's space),
    # "gaussian" (unit vectors from a Gaussian fitted to the training identities' centres,
    # candidates_per_identity each), "unconditional" (its embeddings of unconditional samples,
    # candidates_per_identity each), or "images" (its embeddings of the images under
    # identity_images, one candidate per image).
    config.generate.identity_source = "random"
    config.generate.identity_images = ""  # "images": a folder of identity images
    config.generate.candidates_per_identity = 4  # "gaussian", "unconditional": drawn per identity
    config.generate.max_identity_similarity = 0.3  # cos between any two generated identities
    # Leakage: cos to every training identity's mean embedding must stay at or below this.
    config.generate.max_training_similarity = 0.3
    # Filtering. The judge is another encoder (empty: WORKDIR/judge/encoder/model, trained with
    # encoder.seed + 1 when missing). An image is kept when its judge similarity to the other
    # first-round images of its identity is at least min_judge_similarity and it is no closer
    # than max_duplicate_similarity to an image already kept; otherwise it is redrawn with a new
    # seed, at most max_resample_rounds times, then dropped.
    config.generate.judge_encoder = ""
    config.generate.min_judge_similarity = 0.3
    config.generate.max_duplicate_similarity = 0.95
    config.generate.max_resample_rounds = 2
    # Image-level leakage: every judged image's judge embedding is compared with the judge
    # embeddings of all real training images (cached in WORKDIR/cache); an image whose cosine to
    # the nearest one exceeds this is rejected as "near_training_image" (and redrawn like the
    # others). 1.0 or above: the check is off. Every image's nearest training image (index,
    # label, cosine) is recorded in the shard records either way.
    config.generate.max_training_image_similarity = 1.0
    # Style from real images (diffusion_jax/tasks/generation/style_sources.py, SDEdit): "none"
    # samples from pure noise; "real" starts each image's reverse process from a real training
    # image (chosen from generate.seed, identity, image index and attempt), noised with the
    # image's own x_T to the first sampler timestep below style_strength * T, so pose, lighting,
    # background and expression come from that photo and the identity from the embedding.
    config.generate.style_source = "none"
    # "real": the fraction s of the reverse process run, in [0, 1]: 0 returns the style image's
    # reconstruction (the autoencoder's in latent space), 1 runs every step (plain sampling up to
    # a start term sqrt(abar_T) x_0). Unmeasured: the lead measures its effect.
    config.generate.style_strength = 0.6
    # "real": an image whose judge cosine to its style image's identity (that identity's judge
    # centre over its training images) exceeds this is rejected as "near_style_source" (and
    # redrawn like the others).
    config.generate.max_style_similarity = 0.3
    # Outputs: any of "folders" (identity folders), "tfds" (ArrayRecord), "recordio" (InsightFace).
    config.generate.formats = ("folders", "tfds", "recordio")
    config.generate.image_format = "png"  # or "jpeg"
    config.generate.jpeg_quality = 95  # "jpeg" only
    # This worker's share (see diffusion_jax/tasks/generation/worker_index.py): -1 takes it from the
    # scheduler's variables (SLURM, Kubernetes, Cloud Batch...) or from jax.process_index().
    config.generate.task_index = -1
    config.generate.task_count = -1
    # Workers other than 0 wait this long for worker 0 to write the dataset's identities.
    config.generate.identities_timeout_minutes = 120.0
    # The processes of one jax.distributed job (the pipeline with --distributed) wait for each
    # other's shards; a worker stops with an error when no shard completes for this long.
    config.generate.dataset_timeout_minutes = 120.0

    # Recognisers that test the claim (--mode=pipeline, train_recognizer, evaluate): trained with
    # the identity encoder's recipe (config.encoder: architecture, head, train) and this seed,
    # one on the generated dataset and one on the real training data, then verified on held-out
    # real identities (config.evaluate.verification_sets).
    config.recognizer = ml_collections.ConfigDict()
    config.recognizer.seed = 2  # neither the conditioning encoder's nor the judge's
    config.recognizer.num_steps = -1  # the training budget of both; -1: encoder.train.num_steps
    # The real-trained recogniser sees as many images per identity as were generated (the first
    # ones of each identity, any source).
    config.recognizer.match_images_per_identity = True
    # Fix both training sets instead: the first num_identities identities and the first
    # images_per_identity images of each, of the real and of the generated data (-1: as above).
    config.recognizer.num_identities = -1
    config.recognizer.images_per_identity = -1
    # Both recognisers' training images are translated by up to this many pixels (data.max_shift).
    config.recognizer.max_shift = 0
    # Both recognisers' training images get brightness, contrast and saturation factors drawn
    # uniformly in [1 - color_jitter, 1 + color_jitter] (torchvision's ColorJitter without hue;
    # data.color_jitter).
    config.recognizer.color_jitter = 0.0
    # --mode=train_recognizer: WORKDIR/recognizers/<name>, on data.source/data.path of its own
    # ("image_folder", "recordio" or "tfds"; empty: config.data).
    config.recognizer.name = "custom"
    config.recognizer.data_source = ""
    config.recognizer.data_path = ""
    config.recognizer.data_dir = ""  # image_folder/tfds: where it is prepared; empty: data.data_dir
    # --mode=evaluate: recogniser directories to verify, as "NAME=DIR" or DIR; empty: every
    # recogniser under WORKDIR/recognizers.
    config.recognizer.evaluate = ()

    # --mode=scaling_sweep (docs/scaling.md): synthetic recognisers trained on growing prefixes of
    # one generated dataset (the first identities, the first kept images of each), each with the
    # recognisers' recipe and verified against the workdir's `real` recogniser.
    config.sweep = ml_collections.ConfigDict()
    # The points' synthetic identities, as multiples of the real training set's identities...
    config.sweep.identity_multiples = (1, 2, 4)
    # ... times these images per identity; the generated dataset holds the largest of both.
    config.sweep.images_per_identity = (10, 20)
    # The sweep's generate.candidates_per_identity (0: unchanged). The gaussian and unconditional
    # sources accept fewer candidates the more identities are placed (unconditional: each
    # candidate is a sample); the first identities do not depend on it (identity_sources.py).
    config.sweep.candidates_per_identity = 48
    # The verification set of the plot and of the headline question (added to
    # evaluate.verification_sets when missing; scaling.json holds every set).
    config.sweep.report_set = "test@300"
    config.sweep.out_dir = ""  # scaling.json and scaling.png; empty: WORKDIR/sweep

    # --mode=sampler_sweep (docs/samplers.md): denoiser passes against quality. The same
    # identities drawn from the same noise (x_T) under each sampler setting, graded by the judge;
    # for a few settings also a generated dataset, a synthetic recogniser on it and its ratio.
    config.sampler_sweep = ml_collections.ConfigDict()
    # "sampler:steps" entries (any sampler of core/diffusion/samplers.py; DDPM takes all
    # diffusion.num_timesteps steps), each run at every guidance scale below, or
    # "sampler:steps@scale" at that scale only (guided DDPM would cost 2,000 passes per image).
    config.sampler_sweep.settings = (
        "ddpm:1000@1,ddim:10,ddim:25,ddim:50,dpm_solver_pp_2m:5,dpm_solver_pp_2m:8,"
        "dpm_solver_pp_2m:10,dpm_solver_pp_2m:15,dpm_solver_pp_2m:25,dpm_solver_pp_3m:5,"
        "dpm_solver_pp_3m:8,dpm_solver_pp_3m:10,dpm_solver_pp_3m:15"
    )
    # Classifier-free guidance scales: 0 and 1 cost one denoiser pass per step, others two.
    config.sampler_sweep.guidance_scales = "1,2"
    # The first training identities, each conditioned on the conditioning encoder's embedding of
    # its first real photo (as --mode=evaluate_samples), and the samples drawn of each; the
    # Frechet distance is to their first evaluate.real_images_per_identity real images.
    config.sampler_sweep.identities = 64
    config.sampler_sweep.samples_per_identity = 4
    # The reference setting, "sampler:steps@guidance" (measured even when `settings` lacks it).
    config.sampler_sweep.reference = "ddim:50@1"
    # x_T comes from the first seed for every setting; the reference is also drawn from the
    # others, and each measure's spread over them is its noise estimate.
    config.sampler_sweep.noise_seeds = (0, 1)
    # "sampler:steps@guidance" settings whose generated dataset (the workdir's generation with
    # only the sampler changed) trains a synthetic recogniser, verified against the workdir's
    # real one ("": none; each costs a generation and a recogniser).
    config.sampler_sweep.ratio_settings = "ddim:50@1,dpm_solver_pp_2m:15@1,dpm_solver_pp_2m:8@1"
    # The verification set of their ratio; empty: the validation@N entry of
    # evaluate.verification_sets.
    config.sampler_sweep.ratio_set = ""
    config.sampler_sweep.out_dir = ""  # sampler_sweep.json and .png; empty: WORKDIR/sampler_sweep

    # Device mesh: `data` shards the batch, `fsdp` shards parameters too.
    config.mesh = ml_collections.ConfigDict()
    config.mesh.data = -1  # -1: all remaining devices
    config.mesh.fsdp = 1  # -1: all remaining devices
    return config


def apply_latent(config: ml_collections.ConfigDict) -> None:
    """What every config changes in latent space, before its own UNet edits."""
    config.sample.clip_x0 = False  # latents are not confined to [-1, 1]
