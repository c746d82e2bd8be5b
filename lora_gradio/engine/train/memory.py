"""Will the training run fit on the GPU? An estimate of its memory, before anything loads, and what to change.

`estimate_memory(settings, version)` adds up, in bytes, what a run of loop.py holds on the GPU at its
peak, phase by phase (loop.py's order), for SD 1.x ("sd_v1"), SD 2.x ("sd_v2") and SDXL ("sdxl"):

- caching latents: the VAE in fp32 and its encoder working on a batch of the largest bucket (4 images at 512 px, fewer above)
  (the UNet and the text encoder are not on the GPU yet; the VAE leaves it afterwards);
- caching text-encoder outputs (with cache_text_encoder_outputs): the text encoder(s) and the cache;
- training: the frozen UNet and text encoder(s) in the weight dtype (fp16/bf16, fp32 without mixed precision)
  — with cache_text_encoder_outputs the cached outputs instead of the encoders —, the network with its
  gradients (fp32 with mixed precision, 16 bits with full_fp16/full_bf16) and the optimizer's state, and
  the activations of one step at the largest bucket (forward and backward, with or without gradient
  checkpointing, the text encoders' when they train, at the caption length);
- sample images (when prompts are set): the same weights and optimizer state, the VAE in fp32 again, and
  one UNet call with classifier-free guidance (batch 2) or the VAE decoding, at the largest sample size;
plus the CUDA context. The total is the largest phase.

SDXL's step, as measured: both text encoders (CLIP-L 768 and bigG 1280) run on the [batch * chunks, 77]
token ids; the UNet gets their penultimate states concatenated, [batch, max_token_length + 2, 2048], and
`added_cond_kwargs` (bigG's pooled output [batch, 1280] and the six size conditions [batch, 6]); the LoRA
covers the UNet (722 LoRA / 788 LoCon modules) and, when the text encoder trains, both encoders (72 + 192).

Nothing here is guessed: the activation, optimizer and parameter figures below were measured on the
real-size SD1.5, SD2 and SDXL architectures by `benchmarks/memory_estimate.py` (see its docstring and the
comment above the constants); the one nominal figure is the number of images whose text-encoder outputs
are cached (`NOMINAL_CACHED_IMAGES`). `check_fits(estimate, free_bytes)` compares the total with the GPU's
free memory and suggests changes, each re-estimated with the changed setting; `refuse_if_too_big(report)`
stops a CUDA run whose verdict is "too_big". `check_training_memory(settings)` does all of it for the page
and the command line. No torch import here: the page stays fast.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from lora_gradio.engine.errors import UserError
from lora_gradio.engine.train.latents import encode_batch_size

MiB = 1 << 20
GiB = 1 << 30

VERSIONS = {"sd_v1": "sd_v1", "sd15": "sd_v1", "sd1": "sd_v1", "sd_v2": "sd_v2", "sd_v2_v": "sd_v2", "sd2": "sd_v2",
            # SDXL: ours, and kohya's ss_base_model_version values (eps and v-prediction take the same memory).
            "sdxl": "sdxl", "sdxl_v": "sdxl", "sdxl_base_v1-0": "sdxl", "sdxl_base_v1-0_v": "sdxl"}
# The settings' SDXL presets (config.MODEL_PRESETS: the XL notebook's base models).
SDXL_PRESETS = ("illustrious", "noobai_eps", "noobai_vpred", "pony", "animagine", "sdxl")
# The UNet's context channels per token, and SDXL's pooled text vector: what cached text-encoder outputs hold.
_CONTEXT_DIM = {"sd_v1": 768, "sd_v2": 1024, "sdxl": 768 + 1280}
_POOLED_DIM = {"sd_v1": 0, "sd_v2": 0, "sdxl": 1280}
# With cache_text_encoder_outputs the cache holds one entry per image, but the estimate does not know the
# dataset: it counts this many images (the XL notebook's "images x repeats around 100"). 100 SDXL images at
# 225 tokens are 88 MiB in fp16: a small share, so the nominal count costs little accuracy.
NOMINAL_CACHED_IMAGES = 100
# text_cache.TextEncoderCache encodes the captions this many at a time, with the encoders as loaded (fp32).
TEXT_CACHE_BATCH = 8
# Sampling runs the UNet on the prompt and the negative prompt together (classifier-free guidance).
SAMPLING_BATCH = 2
# How much room the estimate should leave: a policy, not a measurement. The estimate leaves out the
# allocator's rounding and fragmentation (buckets change shape from step to step) and the CUDA kernels that
# load on first use; `benchmarks/memory_estimate.py --cuda` measures both on a real GPU.
HEADROOM = 0.10
# A bare CUDA context with lazy module loading (PyTorch's default since 1.13): 287,047,680 bytes, as measured
# in pytorch/pytorch#86509 (666,632,192 without lazy loading); about 256 MiB in invoke-ai/InvokeAI#9413.
# Not measured here (no GPU on the machine that wrote this): `--cuda` prints this machine's figure.
CUDA_CONTEXT_BYTES = 287_047_680

# ---- Measured constants ------------------------------------------------------------------------------
# Written on a 2-core CPU (no GPU) by benchmarks/memory_estimate.py, about 10 minutes per SD version:
#   PYTHONPATH=DIR python benchmarks/memory_estimate.py --fit --versions sd_v1 --json-out v1.json
#   python benchmarks/memory_estimate.py --fit --versions sd_v2 --no-optimizers --json-out v2.json
#   python benchmarks/memory_estimate.py --merge v1.json v2.json       # prints the literals below
# (DIR: `pip install --target DIR bitsandbytes prodigyopt dadaptation lion-pytorch`, for the optimizer rows)
# with torch 2.13, diffusers 0.42.1, transformers 5.24, lycoris-lora 4.1.3, bitsandbytes 0.50.2, prodigyopt
# 1.1.2, dadaptation 3.2, lion-pytorch 0.2.5: the real-size UNet and text encoder built from model_configs/
# on the meta device, our network attached with create_network, one training step (loop.training_step's
# operations) under CUDA's autocast rules and attention kernels, its tensors followed storage by storage.
# The meta-device count equals a real CPU step's to 0.005% (`--validate-cpu`); at ten set-ups that were not
# fitted the activations below are within 0.22% of a fresh measurement (`--check`). The fits never
# underestimate a measured point; with gradient checkpointing, LoHa/LoKr/DoRA (which rebuild full weights
# per block) overestimate by up to 20% (LoRA, LoCon and IA3: under 1%).
# _BASE_PARAMS' SD UNets are the UNets alone (the first fit had subtracted a LoRA's 6.8M/6.9M parameters).
#
# SDXL (the same measurement with both text encoders and kohya's SDXL step, see memory_estimate.py), on the
# same 2-core CPU (shared with other jobs) with torch 2.13, diffusers 0.42.1, transformers 5.25,
# lycoris-lora 4.1.3, our network.create_network (one text encoder per call, then both in one call):
#   python benchmarks/memory_estimate.py --fit --versions sdxl --no-optimizers --json-out xl.json      # 49 min
# then, once `--check` showed the text-encoder term (then batch*tokens only) 0.9% under at the XL defaults,
# the text-encoder term with its per-pixel part and the checkpointing grid with dim-8 (and batch-4) points:
#   ... --fit --versions sdxl --no-optimizers --only full --text-encoder-only xl.json --json-out te.json  # 57 min
#   ... --fit --versions sdxl --no-optimizers --only checkpointing --json-out ck.json                    # 57 min
#   (the two at once; both fp32 DoRA set-ups again alone after an out-of-memory kill, 20 min; 16bit
#   checkpointing LoRA/LoCon again with the batch-4 point, 4 min)
#   PYTHONPATH=DIR python benchmarks/memory_estimate.py --fit --optimizers-only --versions sd_v1 --json-out opt.json   # 7-19 min
# (DIR as above; CAME from pytorch-optimizer, in the venv) merged into SD's literals. Points: 768 and 1024 px,
# batch 1, 2 and 4, 75/225 tokens, dims 8/16/64, conv 8/32, every type and precision; the text encoders at
# six points (768/1024 px, batch 1-4, 75/225 tokens). SDXL's activations are the largest non-gradient total
# of the step (memory_estimate.activation: with checkpointing SDXL's peak moves as the network grows, which
# SD's definition does not follow linearly). The fits never underestimate a measured point (LoRA and LoCon
# overestimate by up to 3%, LoHa with checkpointing by 7%); `--check` at seven set-ups off the grid: within
# 0.5%, the XL defaults (dim 8 at batch 4, both encoders trained) 0.03% (1 MiB) under, so 16-bit
# checkpointing LoRA's text-encoder constant carries 2 MiB more than its fit (37553 bytes).
# full_fp16/full_bf16 use the mixed 16-bit activations (`--check` points: the same within 0.5%) and
# _OPTIMIZER_BYTES_PER_PARAM_16BIT (the optimizers over a 16-bit network: their state follows it; the
# larger of two runs where AdaFactor's step varied). CAME's rows: the same optimizer run, measured.
#
# _UNET_ACTIVATIONS[version][precision][checkpointing][lora_type] = coefficients of
#   batch*latent_px, batch*latent_px*network_dim, batch*latent_px*conv_dim, batch*(max_token_length+2),
#   1, unet_network_params
# where latent_px = (width/8)*(height/8) of the largest bucket: the step's peak above the weights, less the
# gradients alive at that moment (SDXL: the non-gradient peak), with the text encoder frozen (text_encoder_lr = 0).
# _TEXT_ENCODER_ACTIVATIONS[...] = coefficients of batch*chunks*77, 1 and (SDXL) batch*latent_px: what
# training the text encoder(s) adds (chunks = max_token_length / 75).
# _NETWORK_PARAMS[version][lora_type] = {"unet": (fixed, per network_dim, per conv_dim), "text_encoder": (fixed, per network_dim)}
# (SDXL's "text_encoder": both encoders together).
# _OPTIMIZER_BYTES_PER_PARAM[optimizer][lora_type] = (state, extra during the step), per trained parameter
# (_16BIT: with the network in 16 bits).
# _VAE_*_PER_PX, _UNET_SAMPLING_PER_PX: bytes per image pixel and image, without grad (fp32 VAE).
# _TEXT_CACHE_ENCODE_PER_TOKEN: bytes per caption token (77 per chunk) while the fp32 text encoder(s) encode
# without grad for the text-encoder cache (memory_estimate.measure_text_cache_encode, 8 captions of 1 and
# 3 chunks and 2 of 2: the same figure at each; a one-off call, 1 s, beside the SDXL fit; --fit measures it now).
_BASE_PARAMS = {'sd_v1': {'unet': 859520964, 'text_encoder': 123060480, 'vae': 83653863},
 'sd_v2': {'unet': 865910724, 'text_encoder': 340387840, 'vae': 83653863},
 'sdxl': {'unet': 2567463684, 'text_encoder': 817720320, 'vae': 83653863}}
_NETWORK_PARAMS = {'sd_v1': {'LoRA': {'unet': (0.0, 423936.0, 0.0), 'text_encoder': (0.0, 165888.0)},
           'LoCon': {'unet': (0.0, 506816.0, 544000.0), 'text_encoder': (0.0, 165888.0)},
           'LoHa': {'unet': (0.0, 1013632.0, 1088000.0), 'text_encoder': (0.0, 331776.0)},
           'LoKr': {'unet': (432421.333, 1117.333, 18554.667), 'text_encoder': (137216.0, 256.0)},
           'IA3': {'unet': (315520.0, 0.0, 0.0), 'text_encoder': (82944.0, 0.0)},
           'DoRA': {'unet': (315520.0, 506816.0, 544000.0), 'text_encoder': (82944.0, 165888.0)}},
 'sd_v2': {'LoRA': {'unet': (0.0, 432128.0, 0.0), 'text_encoder': (0.0, 423936.0)},
           'LoCon': {'unet': (0.0, 515008.0, 544000.0), 'text_encoder': (0.0, 423936.0)},
           'LoHa': {'unet': (0.0, 1030016.0, 1088000.0), 'text_encoder': (0.0, 847872.0)},
           'LoKr': {'unet': (438373.333, 1117.333, 18554.667), 'text_encoder': (345429.333, 490.667)},
           'IA3': {'unet': (315520.0, 0.0, 0.0), 'text_encoder': (211968.0, 0.0)},
           'DoRA': {'unet': (315520.0, 515008.0, 544000.0), 'text_encoder': (211968.0, 423936.0)}},
 'sdxl': {'LoRA': {'unet': (0.0, 2659840.0, 0.0), 'text_encoder': (0.0, 903168.0)},
          'LoCon': {'unet': (0.0, 2718400.0, 355840.0), 'text_encoder': (0.0, 903168.0)},
          'LoHa': {'unet': (0.0, 5436800.0, 711680.0), 'text_encoder': (0.0, 1806336.0)},
          'LoKr': {'unet': (1854106.667, 9942.0, 12090.667), 'text_encoder': (645120.0, 2816.0)},
          'IA3': {'unet': (1488960.0, 0.0, 0.0), 'text_encoder': (451584.0, 0.0)},
          'DoRA': {'unet': (1488960.0, 2718400.0, 355840.0), 'text_encoder': (451584.0, 903168.0)}}}
_UNET_ACTIVATIONS = {'sd_v1': {'16bit': {'full': {'LoRA': (307189.0, 128.548, 0.0, 55619.9, 379086.0, 1.89839),
                              'LoCon': (329978.0, 137.828, 38.0309, 53698.3, 3728990.0, 1.80361),
                              'LoHa': (330127.0, 0.0, 0.0, 54649.3, 1626930000.0, 0.0),
                              'LoKr': (330130.0, 0.0, 0.0, 53099.3, 1633160000.0, 0.0),
                              'IA3': (330127.0, 0.0, 0.0, 54649.3, 812663000.0, 2575.53),
                              'DoRA': (330123.0, 0.0, 0.289062, 54614.8, 5061090000.0, 1.9911)},
                     'checkpointing': {'LoRA': (74207.8, 38.365, 0.0, 2911.42, 58256.7, 0.268903),
                                       'LoCon': (78883.1, 38.6127, 6.01802, 2231.65, 1160330.0, 0.229562),
                                       'LoHa': (66509.1, 0.0, 64.941, 0.0, 434056000.0, 1.40539),
                                       'LoKr': (73867.1, 28.2773, 0.0, 0.0, 287642000.0, 56.6071),
                                       'IA3': (79708.4, 0.0, 0.0, 9056.57, 108004000.0, 337.368),
                                       'DoRA': (74585.4, 0.0, 27.9938, 0.0, 747094000.0, 1.27081)}},
           'fp32': {'full': {'LoRA': (456117.0, 257.12, 0.0, 105036.0, -333576.0, 0.0494308),
                             'LoCon': (462561.0, 273.982, 57.8866, 105836.0, -705229.0, 0.0440139),
                             'LoHa': (462554.0, 0.0, 0.0, 103122.0, 3252750000.0, 0.0),
                             'LoKr': (462551.0, 0.273042, 0.0, 100671.0, 3257120000.0, 0.0),
                             'IA3': (462554.0, 0.0, 0.0, 103122.0, 1624770000.0, 5149.31),
                             'DoRA': (461516.0, 37.271, 0.0, 78805.2, 6704940000.0, 1.29017)},
                    'checkpointing': {'LoRA': (116487.0, 76.7368, 0.0, 5800.03, -19541.1, 0.00328267),
                                      'LoCon': (119050.0, 76.7195, 6.54367, 5843.03, -42362.2, 0.0028757),
                                      'LoHa': (110584.0, 0.0, 56.1067, 0.0, 601335000.0, 0.938707),
                                      'LoKr': (120609.0, 0.0, 0.0, 17779.8, 432537000.0, 0.0),
                                      'IA3': (120609.0, 0.0, 0.0, 18097.9, 215935000.0, 674.512),
                                      'DoRA': (120611.0, 0.0, 0.0, 16453.9, 872883000.0, 0.244169)}}},
 'sd_v2': {'16bit': {'full': {'LoRA': (302120.0, 128.548, 0.0, 57155.9, 379086.0, 1.8624),
                              'LoCon': (324247.0, 138.002, 39.3153, 54883.4, 4265410.0, 1.77326),
                              'LoHa': (324418.0, 0.0, 0.0, 56185.3, 1626930000.0, 0.0),
                              'LoKr': (324421.0, 0.0, 0.0, 54635.3, 1633160000.0, 0.0),
                              'IA3': (324418.0, 0.0, 0.0, 56185.3, 812663000.0, 2575.53),
                              'DoRA': (324414.0, 0.0, 0.283873, 56152.2, 5086640000.0, 1.99122)},
                     'checkpointing': {'LoRA': (69183.8, 38.365, 0.0, 3423.42, 58256.7, 0.262324),
                                       'LoCon': (73215.6, 38.6458, 6.19543, 2691.34, 1236340.0, 0.225446),
                                       'LoHa': (58931.0, 0.0, 72.4703, 0.0, 452867000.0, 1.47432),
                                       'LoKr': (66419.5, 32.2139, 0.0, 0.0, 302778000.0, 64.7055),
                                       'IA3': (73264.5, 0.0, 0.0, 3350.95, 108996000.0, 345.435),
                                       'DoRA': (67237.4, 0.0, 32.1148, 0.0, 765288000.0, 1.40436)}},
           'fp32': {'full': {'LoRA': (456049.0, 257.122, 0.0, 106056.0, -333209.0, 0.0484654),
                             'LoCon': (462493.0, 273.976, 57.9054, 106856.0, -704786.0, 0.0435298),
                             'LoHa': (462486.0, 0.0, 0.0, 104144.0, 3252750000.0, 0.0),
                             'LoKr': (462482.0, 0.273379, 0.0, 101693.0, 3257120000.0, 0.0),
                             'IA3': (462486.0, 0.0, 0.0, 104144.0, 1624760000.0, 5149.31),
                             'DoRA': (461467.0, 36.6207, 0.0, 80069.8, 6729970000.0, 1.28738)},
                    'checkpointing': {'LoRA': (116463.0, 76.7368, 0.0, 6824.03, -19541.1, 0.00322044),
                                      'LoCon': (119026.0, 76.7191, 6.54478, 6866.98, -42325.6, 0.00284418),
                                      'LoHa': (108919.0, 0.0, 55.9819, 0.0, 609141000.0, 0.899269),
                                      'LoKr': (119022.0, 0.121405, 0.0, 6271.9, 439768000.0, 0.0),
                                      'IA3': (119025.0, 0.0, 0.0, 6686.71, 217919000.0, 690.646),
                                      'DoRA': (118919.0, 3.80576, 0.0, 4185.03, 883558000.0, 0.157639)}}},
 'sdxl': {'16bit': {'full': {'LoRA': (511843.0, 137.795, 0.0, 341364.0, 9377210.0, 1.61549),
                             'LoCon': (542148.0, 148.655, 38.4102, 340399.0, 11349900.0, 1.59337),
                             'LoHa': (542736.0, 0.0, 0.0, 337050.0, 4405860000.0, 0.0),
                             'LoKr': (542857.0, 0.0, 3.43365, 327535.0, 4416410000.0, 0.0),
                             'IA3': (542736.0, 0.0, 0.0, 337050.0, 2202030000.0, 1478.87),
                             'DoRA': (542727.0, 0.540683, 0.0959408, 336963.0, 14659900000.0, 1.99586)},
                    'checkpointing': {'LoRA': (49086.2, 0.0, 0.0, 7713.37, -10265000.0, 0.581825),
                                      'LoCon': (59779.9, 7.05126, 14.4407, 3724.18, 1364700.0, 0.029791),
                                      'LoHa': (56561.5, 0.0, 0.0, 23415.4, 290982000.0, 0.0),
                                      'LoKr': (59843.7, 0.0, 0.0, 3938.72, 160323000.0, 0.0),
                                      'IA3': (59840.3, 0.0, 0.0, 4130.95, 80017600.0, 53.7339),
                                      'DoRA': (59778.1, 0.591665, 7.03372, 3716.36, 489740000.0, 0.0314155)}},
          'fp32': {'full': {'LoRA': (824071.0, 222.588, 0.0, 696257.0, 449133.0, 0.0),
                            'LoCon': (839167.0, 240.112, 57.7016, 691871.0, 967124.0, 0.0),
                            'LoHa': (839401.0, 0.0, 0.0, 674071.0, 8802440000.0, 0.0),
                            'LoKr': (839552.0, 0.0, 3.11542, 662854.0, 8810930000.0, 0.0),
                            'IA3': (839401.0, 0.0, 0.0, 674071.0, 4400850000.0, 2955.6),
                            'DoRA': (837520.0, 142.509, 0.0, 640196.0, 19092200000.0, 1.26828)},
                   'checkpointing': {'LoRA': (77120.3, 12.9997, 0.0, 8216.38, 14360.6, 0.0),
                                     'LoCon': (89600.5, 12.9995, 14.7469, 8247.2, 27046.2, 0.0),
                                     'LoHa': (87481.3, 0.0, 0.0, 20708.7, 404553000.0, 0.0),
                                     'LoKr': (89605.1, 0.0, 0.0, 7985.84, 320370000.0, 0.0),
                                     'IA3': (89600.5, 0.0, 0.0, 8244.78, 159970000.0, 107.427),
                                     'DoRA': (89593.0, 0.137575, 0.713328, 8197.51, 648457000.0, 0.0334981)}}}}
_TEXT_ENCODER_ACTIVATIONS = {'sd_v1': {'16bit': {'full': {'LoRA': (433120.0, 6119850.0),
                              'LoCon': (433120.0, 6119850.0),
                              'LoHa': (430848.0, 200098000.0),
                              'LoKr': (430848.0, 200264000.0),
                              'IA3': (430848.0, 200098000.0),
                              'DoRA': (430848.0, 546134000.0)},
                     'checkpointing': {'LoRA': (21512.0, 55296.0),
                                       'LoCon': (21512.0, 55296.0),
                                       'LoHa': (21146.8, 1045430.0),
                                       'LoKr': (22145.7, 891589.0),
                                       'IA3': (21512.0, 989184.0),
                                       'DoRA': (22145.7, 891589.0)}},
           'fp32': {'full': {'LoRA': (715086.0, 192.0),
                             'LoCon': (715086.0, 192.0),
                             'LoHa': (710542.0, 399901000.0),
                             'LoKr': (710542.0, 400089000.0),
                             'IA3': (710542.0, 399901000.0),
                             'DoRA': (710542.0, 745937000.0)},
                    'checkpointing': {'LoRA': (39944.0, -1.22291e-10),
                                      'LoCon': (39944.0, -1.22291e-10),
                                      'LoHa': (41211.5, 1770890.0),
                                      'LoKr': (39944.0, 1966080.0),
                                      'IA3': (39944.0, 1966080.0),
                                      'DoRA': (39944.0, 1966080.0)}}},
 'sd_v2': {'16bit': {'full': {'LoRA': (925704.0, 14754600.0),
                              'LoCon': (925704.0, 14754600.0),
                              'LoHa': (921384.0, 605135000.0),
                              'LoKr': (921384.0, 605454000.0),
                              'IA3': (921384.0, 605135000.0),
                              'DoRA': (921384.0, 1778820000.0)},
                     'checkpointing': {'LoRA': (51208.0, 73728.0),
                                       'LoCon': (51208.0, 73728.0),
                                       'LoHa': (50721.1, 1393900.0),
                                       'LoKr': (52053.0, 1188790.0),
                                       'IA3': (51208.0, 1318910.0),
                                       'DoRA': (52053.0, 1188790.0)}},
           'fp32': {'full': {'LoRA': (1473110.0, 368.0),
                             'LoCon': (1473110.0, 368.0),
                             'LoHa': (1464470.0, 1209530000.0),
                             'LoKr': (1464470.0, 1209890000.0),
                             'IA3': (1464470.0, 1209530000.0),
                             'DoRA': (1464470.0, 2383220000.0)},
                    'checkpointing': {'LoRA': (98312.0, -7.83713e-10),
                                      'LoCon': (98312.0, -7.83713e-10),
                                      'LoHa': (100002.0, 2361190.0),
                                      'LoKr': (98312.0, 2621440.0),
                                      'IA3': (98312.0, 2621440.0),
                                      'DoRA': (98312.0, 2621440.0)}}},
 'sdxl': {'16bit': {'full': {'LoRA': (2077660.0, 38765300.0, 12800.2),
                             'LoCon': (2077660.0, 39450100.0, 0.12588),
                             'LoHa': (2069250.0, 2127670000.0, 0.12588),
                             'LoKr': (2069250.0, 2129230000.0, 0.12588),
                             'IA3': (2069250.0, 2127670000.0, 0.12588),
                             'DoRA': (2069250.0, 5018310000.0, 0.12588)},
                    'checkpointing': {'LoRA': (108051.0, 2134705.0, 4000.26),
                                      'LoCon': (108050.0, 96229.7, 0.251761),
                                      'LoHa': (108014.0, 4228100.0, 0.0),
                                      'LoKr': (108050.0, 4110310.0, 0.251761),
                                      'IA3': (108050.0, 4110310.0, 0.251761),
                                      'DoRA': (108050.0, 4110310.0, 0.251761)}},
          'fp32': {'full': {'LoRA': (3352520.0, 5994.61, 13760.3),
                            'LoCon': (3352520.0, 4773.7, 0.251761),
                            'LoHa': (3335690.0, 4253750000.0, 0.251761),
                            'LoKr': (3335690.0, 4255580000.0, 0.251761),
                            'IA3': (3335690.0, 4253750000.0, 0.251761),
                            'DoRA': (3335690.0, 7144390000.0, 0.251761)},
                   'checkpointing': {'LoRA': (216104.0, 16310.8, 9403.01),
                                     'LoCon': (210972.0, 8139.4, 0.503521),
                                     'LoHa': (210899.0, 8435710.0, 0.0),
                                     'LoKr': (210972.0, 8200140.0, 0.503521),
                                     'IA3': (210972.0, 8200140.0, 0.503521),
                                     'DoRA': (210953.0, 8281130.0, 0.0)}}}}
_VAE_ENCODE_PER_PX = {'sd_v1': 2572.0, 'sd_v2': 2572.0, 'sdxl': 2572.0}
_VAE_DECODE_PER_PX = {'sd_v1': 3072.5, 'sd_v2': 3072.5, 'sdxl': 3072.5}
_UNET_SAMPLING_PER_PX = {'sd_v1': {'16bit': 342.143, 'fp32': 683.935},
 'sd_v2': {'16bit': 342.586, 'fp32': 684.821},
 'sdxl': {'16bit': 201.504, 'fp32': 402.657}}
_TEXT_CACHE_ENCODE_PER_TOKEN = {'sd_v1': 79880.0, 'sd_v2': 135176.0, 'sdxl': 110600.0}
_OPTIMIZER_BYTES_PER_PARAM = {'AdamW8bit': {'LoRA': (2.0315, 0.0),
               'LoCon': (2.0425, 0.0),
               'LoHa': (2.0424, 0.0),
               'LoKr': (7.8169, 0.0),
               'IA3': (6.7013, 0.0),
               'DoRA': (2.162, 0.0)},
 'AdamW': {'LoRA': (8.0002, 4.0),
           'LoCon': (8.0002, 4.0),
           'LoHa': (8.0002, 4.0),
           'LoKr': (8.0048, 4.0),
           'IA3': (8.0035, 4.0),
           'DoRA': (8.0003, 4.0)},
 'Prodigy': {'LoRA': (16.0, 0.0694),
             'LoCon': (16.0, 0.0488),
             'LoHa': (16.0, 0.0244),
             'LoKr': (16.0, 0.0249),
             'IA3': (16.0, 0.1028),
             'DoRA': (16.0, 0.0475)},
 'DAdaptation': {'LoRA': (12.0, 0.1389),
                 'LoCon': (12.0, 0.0976),
                 'LoHa': (12.0, 0.0488),
                 'LoKr': (12.0, 0.0498),
                 'IA3': (12.0, 0.2056),
                 'DoRA': (12.0, 0.095)},
 'Lion': {'LoRA': (4.0, 0.1389),
          'LoCon': (4.0, 0.0976),
          'LoHa': (4.0, 0.0488),
          'LoKr': (4.0, 0.0498),
          'IA3': (4.0, 0.2056),
          'DoRA': (4.0, 0.095)},
 'AdaFactor': {'LoRA': (0.9093, 0.1434),
               'LoCon': (1.7704, 0.1302),
               'LoHa': (0.3249, 0.0519),
               'LoKr': (0.5373, 0.0552),
               'IA3': (4.8387, 0.22),
               'DoRA': (1.8492, 0.1268)},
 'CAME': {'LoRA': (5.8184, 8.3458),
          'LoCon': (7.5405, 8.5989),
          'LoHa': (4.6497, 7.887),
          'LoKr': (5.0698, 8.2989),
          'IA3': (10.5091, 5.371),
          'DoRA': (7.6982, 8.927)}}
_OPTIMIZER_BYTES_PER_PARAM_16BIT = {'AdamW8bit': {'LoRA': (2.0315, 0.0),
               'LoCon': (2.0425, 0.0),
               'LoHa': (2.0424, 0.0),
               'LoKr': (7.8169, 0.0),
               'IA3': (6.7013, 0.0),
               'DoRA': (2.162, 0.0)},
 'AdamW': {'LoRA': (4.0002, 2.0),
           'LoCon': (4.0002, 2.0),
           'LoHa': (4.0002, 2.0),
           'LoKr': (4.0048, 2.0),
           'IA3': (4.0035, 2.0),
           'DoRA': (4.0003, 2.0)},
 'Prodigy': {'LoRA': (8.0, 0.0347),
             'LoCon': (8.0, 0.0244),
             'LoHa': (8.0, 0.0122),
             'LoKr': (8.0, 0.0125),
             'IA3': (8.0, 0.0514),
             'DoRA': (8.0, 0.0238)},
 'DAdaptation': {'LoRA': (6.0, 0.0694),
                 'LoCon': (6.0, 0.0488),
                 'LoHa': (6.0, 0.0244),
                 'LoKr': (6.0, 0.0249),
                 'IA3': (6.0, 0.1028),
                 'DoRA': (6.0, 0.0475)},
 'Lion': {'LoRA': (2.0, 0.0694),
          'LoCon': (2.0, 0.0488),
          'LoHa': (2.0, 0.0244),
          'LoKr': (2.0, 0.0249),
          'IA3': (2.0, 0.1028),
          'DoRA': (2.0, 0.0475)},
 'AdaFactor': {'LoRA': (0.9093, 0.2822),
               'LoCon': (1.7704, 0.2277),
               'LoHa': (0.3249, 0.1007),
               'LoKr': (0.5373, 0.1046),
               'IA3': (4.8387, 0.4125),
               'DoRA': (1.8492, 0.206)},
 'CAME': {'LoRA': (2.9092, 4.1833),
          'LoCon': (3.7703, 4.3638),
          'LoHa': (2.3248, 4.1002),
          'LoKr': (2.5349, 4.1384),
          'IA3': (5.2546, 3.0874),
          'DoRA': (3.8491, 4.4854)}}
# ---- end of measured constants ------------------------------------------------------------------------

CONV_TYPES = ("LoCon", "LoHa", "LoKr", "IA3", "DoRA")


def gib(n: float) -> str:
    return f"{n / GiB:.1f} GiB"


def canonical_version(version: str) -> str:
    key = VERSIONS.get(str(version).strip().lower())
    if key is None:
        raise UserError(f"Unknown model version {version!r} for the memory estimate: use sd_v1 (SD 1.x), sd_v2 (SD 2.x) or sdxl (SDXL).")
    return key


def is_full_precision(precision: str) -> bool:
    """full_fp16/full_bf16: the network, its gradients and the optimizer state in 16 bits too."""
    return precision.startswith("full_")


def _activation_key(precision: str) -> str:
    """The measured activations of a precision: "fp32" ("no"), else "16bit" (mixed and full alike: the
    UNet runs under the same autocast; a 16-bit network only drops autocast's fp16 copies of the LoRA
    weights, which the mixed figures hold: the estimate stays on the safe side)."""
    return "fp32" if precision == "no" else "16bit"


def _dtype_name(precision: str) -> str:
    return {"no": "fp32", "full_fp16": "fp16", "full_bf16": "bf16"}.get(precision, precision)


# The estimate ------------------------------------------------------------------------------------


@dataclass
class MemoryEstimate:
    """The GPU memory of a run, per phase; `parts` and `total` are those of the largest phase."""

    settings: Any
    version: str
    on_cuda: bool
    precision: str  # "fp16"/"bf16" (mixed), "full_fp16"/"full_bf16" or "no" (fp32)
    bucket: Tuple[int, int]  # the largest bucket (width, height)
    phases: Dict[str, Dict[str, int]]
    notes: List[str] = field(default_factory=list)

    @property
    def peak_phase(self) -> str:
        return max(self.phases, key=lambda name: sum(self.phases[name].values()))

    @property
    def parts(self) -> Dict[str, int]:
        return self.phases[self.peak_phase]

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    def phase_total(self, name: str) -> int:
        return sum(self.phases[name].values())

    def summary(self) -> str:
        s = self.settings
        where = "GPU" if self.on_cuda else "CPU (RAM)"
        precision = {"no": "fp32", "full_fp16": "full fp16", "full_bf16": "full bf16"}.get(self.precision, f"mixed {self.precision}")
        lines = [(
            f"Estimated peak {where} memory: {gib(self.total)} while {self.peak_phase} "
            f"({self.version}, {s.resolution} px, batch {s.train_batch_size}, {precision}, {s.optimizer}, {s.lora_type} {s.network_dim}"
            f"{', gradient checkpointing' if s.gradient_checkpointing else ''}{', text encoder trained' if _trains_text_encoder(s) else ''}"
            f"{', text encoder outputs cached' if _caches_text(s) else ''})."
        )]
        width = max(len(name) for name in self.parts)
        for name, value in self.parts.items():
            lines.append(f"  {name.ljust(width)}  {value / GiB:6.2f} GiB")
        others = [f"{name} {gib(self.phase_total(name))}" for name in self.phases if name != self.peak_phase]
        if others:
            lines.append("  other phases: " + ", ".join(others))
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)


def resolved_precision(settings: Any, on_cuda: bool = True, bf16_supported: bool = True) -> str:
    """What the loop trains in: "auto" is mixed "bf16" where the GPU has it, else mixed "fp16"; "fp16"/"bf16"
    are mixed precision (16-bit weights and activations, the network, its gradients and the optimizer state
    in fp32); "full_fp16"/"full_bf16" keep the network, its gradients and the optimizer state in 16 bits too
    (kohya's --full_fp16/--full_bf16, the XL notebook's "full fp16"). On the CPU only a bf16 choice is kept
    (torch's CPU autocast); the others are "no" (fp32): the CPU has no fp16 loss scaling."""
    if not on_cuda:
        return settings.mixed_precision if settings.mixed_precision in ("bf16", "full_bf16") else "no"
    if settings.mixed_precision != "auto":
        return settings.mixed_precision
    return "bf16" if bf16_supported else "fp16"


def _caches_text(settings: Any) -> bool:
    """cache_text_encoder_outputs (a setting newer than this module's first version: read with a default)."""
    return bool(getattr(settings, "cache_text_encoder_outputs", False))


def _trains_text_encoder(settings: Any) -> bool:
    """Cached text-encoder outputs turn text-encoder training off, as kohya does."""
    return settings.text_encoder_lr > 0 and not _caches_text(settings)


def cached_text_bytes(version: str, max_token_length: int, images: int = NOMINAL_CACHED_IMAGES, bytes_per_value: int = 2) -> int:
    """The text-encoder outputs kept per image when they are cached: [77 * chunks, context] states and
    SDXL's pooled vector, for `images` images."""
    version = canonical_version(version)
    chunks = max(1, max_token_length // 75)
    per_image = (77 * chunks * _CONTEXT_DIM[version] + _POOLED_DIM[version]) * bytes_per_value
    return per_image * images


def largest_bucket(settings: Any) -> Tuple[int, int]:
    """The largest bucket the settings allow (data.make_bucket_resolutions, as kohya makes them).

    Every bucket holds at most resolution^2 pixels (its height is area // width rounded down to the step),
    so the square bucket is the largest; the step's memory follows the pixel count, not the shape.
    """
    from lora_gradio.engine.train.data import make_bucket_resolutions

    resos = make_bucket_resolutions(settings.resolution, settings.min_bucket_reso, settings.max_bucket_reso, settings.bucket_reso_steps)
    best = max(resos, key=lambda wh: (wh[0] * wh[1], -abs(wh[0] - wh[1])))
    if best[0] * best[1] < settings.resolution ** 2:  # never below the nominal square
        best = (settings.resolution, settings.resolution)
    return best


def largest_sample(settings: Any) -> "Tuple[int, int] | None":
    """The largest sample image (prompts may set --w/--h), or None when no samples are made."""
    if not (settings.sample_prompts and settings.sample_every_n_epochs):
        return None
    from lora_gradio.engine.train.sampling import parse_prompt

    sizes = [parse_prompt(text, settings.resolution, settings.seed) for text in settings.sample_prompts]
    sample = max(sizes, key=lambda p: p.width * p.height)
    return sample.width, sample.height


def network_params(version: str, lora_type: str, network_dim: int, conv_dim: int, train_text_encoder: bool) -> Dict[str, int]:
    """Parameters of our network (create_network) on the UNet and on the text encoder."""
    table = _NETWORK_PARAMS[canonical_version(version)][lora_type]
    conv = conv_dim if lora_type in CONV_TYPES else 0
    unet = table["unet"][0] + table["unet"][1] * network_dim + table["unet"][2] * conv
    te = table["text_encoder"][0] + table["text_encoder"][1] * network_dim if train_text_encoder else 0
    return {"unet": int(round(unet)), "text_encoder": int(round(te))}


def unet_activation_bytes(version: str, precision: str, checkpointing: bool, lora_type: str, batch: int, width: int, height: int,
                          max_token_length: int, network_dim: int, conv_dim: int, unet_network_params: int) -> int:
    """The step's activations with the text encoder frozen (see the constants' comment)."""
    coef = _UNET_ACTIVATIONS[canonical_version(version)][_activation_key(precision)]["checkpointing" if checkpointing else "full"][lora_type]
    px = (width // 8) * (height // 8)
    conv = conv_dim if lora_type in CONV_TYPES else 0
    terms = (batch * px, batch * px * network_dim, batch * px * conv, batch * (max_token_length + 2), 1.0, unet_network_params)
    return max(0, int(sum(c * t for c, t in zip(coef, terms, strict=True))))


def text_encoder_activation_bytes(version: str, precision: str, checkpointing: bool, lora_type: str, batch: int, max_token_length: int,
                                  width: int = 0, height: int = 0) -> int:
    """What training the text encoder(s) adds to the step's activations (SDXL's has a part per latent pixel)."""
    coef = _TEXT_ENCODER_ACTIVATIONS[canonical_version(version)][_activation_key(precision)]["checkpointing" if checkpointing else "full"][lora_type]
    chunks = max(1, max_token_length // 75)
    terms = (batch * chunks * 77, 1.0, batch * (width // 8) * (height // 8))
    return max(0, int(sum(c * t for c, t in zip(coef, terms))))


def optimizer_bytes(optimizer: str, lora_type: str, trained_params: int, full_16bit: bool = False) -> Tuple[int, int]:
    """(state, extra during the step) of `optimizer` over `trained_params` network parameters; `full_16bit`:
    with the network in 16 bits (full_fp16/full_bf16), whose state follows the parameters' dtype."""
    per_type = (_OPTIMIZER_BYTES_PER_PARAM_16BIT if full_16bit else _OPTIMIZER_BYTES_PER_PARAM).get(optimizer)
    if not per_type:
        raise UserError(f"No memory figures for the optimizer {optimizer!r}: choose AdamW8bit, AdamW, Prodigy, DAdaptation, Lion, AdaFactor or CAME.")
    state, step = per_type.get(lora_type) or per_type["LoRA"]
    return int(state * trained_params), int(step * trained_params)


def estimate_memory(settings: Any, version: str = "sd_v1", *, on_cuda: bool = True, bf16_supported: bool = True,
                    bucket: "Tuple[int, int] | None" = None) -> MemoryEstimate:
    """The memory a run with `settings` needs at its peak (see the module doc).

    `version`: "sd_v1" (SD 1.x, the SD presets), "sd_v2" (SD 2.x) or "sdxl" (SDXL, both text encoders);
    `model_version` finds it for a model. `on_cuda=False` estimates a CPU run (fp32, plain AdamW, no CUDA
    context): the RAM it needs beyond Python. `bucket` (width, height) replaces the largest bucket the
    settings allow, e.g. the largest one a dataset uses.
    """
    version = canonical_version(version)
    precision = resolved_precision(settings, on_cuda, bf16_supported)
    full = is_full_precision(precision)
    weight_bytes = 4 if precision == "no" else 2
    network_bytes = 2 if full else 4  # the network and its gradients
    dtype_name = _dtype_name(precision)
    width, height = bucket or largest_bucket(settings)
    lora_type = settings.lora_type
    cache_text = _caches_text(settings)
    train_te = _trains_text_encoder(settings)
    optimizer = settings.optimizer if on_cuda or settings.optimizer != "AdamW8bit" else "AdamW"  # optim.build_optimizer
    base = _BASE_PARAMS[version]
    net = network_params(version, lora_type, settings.network_dim, settings.conv_dim, train_te)
    net_total = net["unet"] + net["text_encoder"]
    trained = (net["unet"] if settings.unet_lr > 0 else 0) + net["text_encoder"]
    state, step_extra = optimizer_bytes(optimizer, lora_type, trained, full)
    batch = settings.train_batch_size
    activations = unet_activation_bytes(version, precision, settings.gradient_checkpointing, lora_type, batch, width, height,
                                        settings.max_token_length, settings.network_dim, settings.conv_dim, net["unet"])
    if train_te:
        activations += text_encoder_activation_bytes(version, precision, settings.gradient_checkpointing, lora_type, batch, settings.max_token_length,
                                                     width, height)
    context = {"CUDA context": CUDA_CONTEXT_BYTES} if on_cuda else {}
    encoders = "text encoders (CLIP-L + bigG)" if version == "sdxl" else "text encoder"
    te_weights = {f"{encoders} weights ({dtype_name})": base["text_encoder"] * weight_bytes}
    net_dtype = dtype_name if full else "fp32"
    cached = {}
    if cache_text:
        cached[f"cached text-encoder outputs ({NOMINAL_CACHED_IMAGES} images)"] = cached_text_bytes(
            version, settings.max_token_length, bytes_per_value=weight_bytes)
    unet_weights = {f"UNet weights ({dtype_name})": base["unet"] * weight_bytes}
    network_weights = {f"{lora_type} network ({net_dtype}, {net_total / 1e6:.1f}M parameters)": net_total * network_bytes}
    training = dict(context)
    training.update(unet_weights)
    training.update(cached if cache_text else te_weights)  # cached: the encoders are off the GPU while training
    training.update(network_weights)
    training[f"gradients ({net_dtype})"] = trained * network_bytes
    training[f"optimizer state ({optimizer}{', 16-bit' if full else ''})"] = state
    if activations >= step_extra:
        training[f"activations (batch {batch} at {width}x{height}{', checkpointed' if settings.gradient_checkpointing else ''})"] = activations
    else:
        training[f"optimizer step ({optimizer})"] = step_extra
    phases: Dict[str, Dict[str, int]] = {}
    vae_weights = base["vae"] * 4
    cache_batch = encode_batch_size(width, height)  # loop.py always caches latents, in batches of this many
    phases["caching latents"] = dict(context, **{
        "VAE weights (fp32)": vae_weights,
        f"VAE encoding ({cache_batch} image{'s' if cache_batch > 1 else ''} at {width}x{height})": int(_VAE_ENCODE_PER_PX[version] * cache_batch * width * height),
    })
    if cache_text:
        # text_cache.TextEncoderCache: the encoders as loaded (fp32) encode the captions once, a batch at a
        # time without gradients, then leave the GPU.
        chunks = max(1, settings.max_token_length // 75)
        phases["caching text-encoder outputs"] = dict(context, **{
            f"{encoders} weights (fp32)": base["text_encoder"] * 4,
            f"encoding ({TEXT_CACHE_BATCH} captions)": int(_TEXT_CACHE_ENCODE_PER_TOKEN[version] * TEXT_CACHE_BATCH * chunks * 77),
        }, **cached)
    phases["training"] = training
    sample = largest_sample(settings)
    if sample is not None:
        sw, sh = sample
        unet_call = int(_UNET_SAMPLING_PER_PX[version][_activation_key(precision)] * SAMPLING_BATCH * sw * sh)
        decode = int(_VAE_DECODE_PER_PX[version] * sw * sh)
        sampling = dict(context)
        sampling.update(unet_weights)
        sampling.update(te_weights)  # the prompts are encoded: cached or not, the encoders are on the GPU
        sampling.update(cached)
        sampling.update(network_weights)
        sampling[f"optimizer state ({optimizer}{', 16-bit' if full else ''})"] = state
        sampling["VAE weights (fp32)"] = vae_weights
        if unet_call >= decode:
            sampling[f"UNet call (batch {SAMPLING_BATCH} at {sw}x{sh})"] = unet_call
        else:
            sampling[f"VAE decoding ({sw}x{sh})"] = decode
        phases["making sample images"] = sampling
    notes = []
    if version == "sd_v1" and settings.resolution > 768:
        notes.append(f"SD 1.x models are trained at 512 px; {settings.resolution} px takes much more memory and rarely helps.")
    if optimizer != settings.optimizer:
        notes.append("on the CPU AdamW8bit is replaced by AdamW (bitsandbytes needs an NVIDIA GPU).")
    if cache_text:
        notes.append(f"cached text-encoder outputs are counted for {NOMINAL_CACHED_IMAGES} images "
                     f"({cached_text_bytes(version, settings.max_token_length, 1, weight_bytes) / MiB:.2f} MiB each); "
                     "the text encoders are not trained.")
    estimate = MemoryEstimate(settings, version, on_cuda, precision, (width, height), phases, notes)
    if estimate.peak_phase == "caching latents":
        notes.append(f"the peak is the VAE encoding {cache_batch} image(s) at once while caching latents (fp32): "
                     "batch size and checkpointing do not change it, a lower resolution does.")
    return estimate


def peak_report(estimate: MemoryEstimate, allocated: int, reserved: int) -> str:
    """A line for the end of a GPU run's log: torch's real peak beside the estimate, so every run
    measures the estimate's error (torch's figures leave out the CUDA context; the estimate has it)."""
    expected = estimate.total - (CUDA_CONTEXT_BYTES if estimate.on_cuda else 0)
    error = f" ({(expected - allocated) / allocated:+.0%})" if allocated else ""
    return (f"GPU memory: peak {gib(allocated)} allocated by torch, {gib(reserved)} reserved; "
            f"estimated {gib(expected)} while {estimate.peak_phase}{error}")


# Fitting it ----------------------------------------------------------------------------------------


@dataclass
class Suggestion:
    """One change to the settings and the estimate with it."""

    changes: Dict[str, Any]  # setting -> new value (what the page's "apply" button sets)
    text: str
    total: int
    fits: bool

    def describe(self) -> str:
        verdict = "fits" if self.fits else "still too much"
        return f"{self.text}: about {gib(self.total)} ({verdict})"


@dataclass
class FitReport:
    verdict: str  # "fits", "tight", "too_big" or "no_gpu"
    estimate: MemoryEstimate
    free_bytes: Optional[int]
    gpu_name: str = ""
    total_bytes: Optional[int] = None
    suggestions: List[Suggestion] = field(default_factory=list)
    message: str = ""

    @property
    def fits(self) -> bool:
        return self.verdict in ("fits", "tight")

    def summary(self) -> str:
        lines = [self.message]
        if self.suggestions:
            if any(s.fits for s in self.suggestions if not s.text.startswith("all together")):
                lines.append("Any one change marked \"fits\" is enough; the first ones cost the result least:")
            else:
                lines.append("No single change is enough; the last line combines them:")
            lines += [f"  - {s.describe()}" for s in self.suggestions]
        lines.append(self.estimate.summary())
        return "\n".join(lines)


def _with(settings: Any, **changes: Any) -> Any:
    from lora_gradio.engine.settings_model import to_dict
    from lora_gradio.engine.train.config import validate_settings

    return validate_settings({**to_dict(settings), **changes})


def _needs(total: int, free: int) -> bool:
    """Whether `total` fits into `free` with the headroom kept."""
    return total * (1 + HEADROOM) <= free


def check_fits(estimate: MemoryEstimate, free_bytes: "int | None", *, gpu_name: str = "", total_bytes: "int | None" = None,
               bf16_supported: bool = True) -> FitReport:
    """Compare the estimate with the GPU's free memory and suggest changes when it does not fit.

    `free_bytes=None` means no GPU: training runs on the CPU. Each suggestion is the estimate re-run with
    the changed settings, cheapest for the result first: mixed precision, gradient checkpointing, a smaller
    batch (the largest that fits), AdamW8bit, full 16-bit precision (from mixed), a lower resolution (the
    highest that fits; for SDXL after the text-encoder changes, and not below 512), leaving the text
    encoder alone, caching the text encoders' outputs, a plain LoRA instead of a type that rebuilds
    weights, a smaller network_dim. When no single change is enough, the last suggestion combines them.
    `refuse_if_too_big(report)` turns a "too_big" verdict into the error that stops a run.
    """
    if free_bytes is None:
        message = ("No NVIDIA GPU found: training will run on the CPU (fp32 unless bf16 is chosen), very slowly. "
                   "Use a machine or Colab runtime with a GPU for real runs.")
        return FitReport("no_gpu", estimate, None, message=message)
    name = f" on {gpu_name}" if gpu_name else ""
    need, free = estimate.total, int(free_bytes)
    if _needs(need, free):
        return FitReport("fits", estimate, free, gpu_name, total_bytes,
                         message=f"Fits{name}: about {gib(need)} needed, {gib(free)} free.")
    verdict = "tight" if need <= free else "too_big"
    if verdict == "tight":
        message = (f"Tight{name}: about {gib(need)} needed, {gib(free)} free, less than {HEADROOM:.0%} to spare; "
                   "it may run out of memory on a large bucket.")
    else:
        message = f"Will not fit{name}: about {gib(need)} needed, only {gib(free)} free."
    suggestions = _suggestions(estimate, free, bf16_supported)
    return FitReport(verdict, estimate, free, gpu_name, total_bytes, suggestions, message)


def _reestimate(estimate: MemoryEstimate, settings: Any, bf16_supported: bool) -> MemoryEstimate:
    return estimate_memory(settings, estimate.version, on_cuda=estimate.on_cuda, bf16_supported=bf16_supported,
                           bucket=None if estimate.bucket == largest_bucket(estimate.settings) else estimate.bucket)


def _suggestions(estimate: MemoryEstimate, free: int, bf16_supported: bool) -> List[Suggestion]:
    from lora_gradio.engine.settings_model import to_dict

    s = estimate.settings
    out: List[Suggestion] = []
    sdxl = estimate.version == "sdxl"

    def consider(changes: Dict[str, Any], text: str) -> "Suggestion | None":
        try:
            changed = _with(s, **changes)
        except UserError:
            return None
        total = _reestimate(estimate, changed, bf16_supported).total
        if total >= estimate.total:
            return None  # saves nothing in this run
        suggestion = Suggestion(changes, text, total, _needs(total, free))
        out.append(suggestion)
        return suggestion

    def lower_resolution() -> None:
        best = None
        for changes in _resolution_options(estimate):
            try:
                total = _reestimate(estimate, _with(s, **changes), bf16_supported).total
            except UserError:
                continue
            best = (changes, total)
            if _needs(total, free):
                break
        if best is not None:
            changes, total = best
            out.append(Suggestion(changes, f"lower resolution to {changes['resolution']} (less detail)", total, _needs(total, free)))

    if s.mixed_precision == "no":
        consider({"mixed_precision": "auto"}, "set mixed_precision to auto (fp16/bf16 weights and activations)")
    if not s.gradient_checkpointing:
        consider({"gradient_checkpointing": True}, "turn on gradient_checkpointing (about 30% slower per step, same result)")
    if s.train_batch_size > 1:
        best = None
        for batch in range(s.train_batch_size - 1, 0, -1):
            total = _reestimate(estimate, _with(s, train_batch_size=batch), bf16_supported).total
            best = (batch, total)
            if _needs(total, free):
                break
        if best is not None:
            batch, total = best
            out.append(Suggestion({"train_batch_size": batch}, f"lower train_batch_size to {batch} (more steps per epoch)", total, _needs(total, free)))
    if s.optimizer in ("AdamW", "Prodigy", "DAdaptation", "Lion", "AdaFactor"):
        adaptive = s.optimizer in ("Prodigy", "DAdaptation")  # their rates are multipliers around 1: set the guide's
        changes = {"optimizer": "AdamW8bit", "unet_lr": 5e-4, "text_encoder_lr": 1e-4 if s.text_encoder_lr > 0 else 0.0} if adaptive else {"optimizer": "AdamW8bit"}
        consider(changes, "use the AdamW8bit optimizer" + (" (with unet_lr 5e-4, text_encoder_lr 1e-4)" if adaptive else ""))
    if estimate.precision in ("fp16", "bf16"):
        full = f"full_{estimate.precision}"
        consider({"mixed_precision": full}, f"set mixed_precision to {full} (the LoRA, its gradients and the optimizer state in 16 bits, "
                 "as the XL notebook trains)")
    if not sdxl and s.resolution > _lowest_resolution(estimate):
        lower_resolution()
    if s.text_encoder_lr > 0 and not _caches_text(s):
        consider({"text_encoder_lr": 0.0}, "set text_encoder_lr to 0 (train the UNet only; fine for styles)")
    if not _caches_text(s) and "cache_text_encoder_outputs" in to_dict(s):
        consider({"cache_text_encoder_outputs": True}, "turn on cache_text_encoder_outputs (the text encoders leave the GPU while training; "
                 "no tag shuffling, no text-encoder training)")
    if sdxl and s.resolution > _lowest_resolution(estimate):  # SDXL below 1024 px loses more than the changes above
        lower_resolution()
    if s.lora_type in ("LoHa", "LoKr", "IA3", "DoRA"):
        consider({"lora_type": "LoCon"}, f"use LoCon instead of {s.lora_type} (it does not rebuild full weights each step)")
    if s.network_dim > 16:
        consider({"network_dim": 16, "network_alpha": min(s.network_alpha, 16)}, "lower network_dim to 16")
    out = [x for x in out if x.total < estimate.total]
    if not any(x.fits for x in out) and len(out) > 1:
        out.append(_combined(estimate, out, free, bf16_supported))
    return out


def _lowest_resolution(estimate: MemoryEstimate) -> int:
    """The lowest resolution suggested: 256, or 512 for SDXL (its smallest useful size)."""
    return 512 if estimate.version == "sdxl" else 256


def _resolution_options(estimate: MemoryEstimate) -> List[Dict[str, Any]]:
    """Each lower resolution in steps of 64, highest first (with min_bucket_reso lowered where needed)."""
    s = estimate.settings
    return [dict({"resolution": r}, **({"min_bucket_reso": r} if s.min_bucket_reso > r else {}))
            for r in range(s.resolution - 64, _lowest_resolution(estimate) - 1, -64)]


def _combined(estimate: MemoryEstimate, singles: List[Suggestion], free: int, bf16_supported: bool) -> Suggestion:
    """Apply the single changes in order (cheapest first) until the estimate fits; the batch and the
    resolution are searched again on top of the changes before them (the largest that fits)."""
    s = estimate.settings
    changes: Dict[str, Any] = {}
    total = estimate.total

    def total_with(extra: Dict[str, Any]) -> "int | None":
        try:
            return _reestimate(estimate, _with(s, **changes, **extra), bf16_supported).total
        except UserError:
            return None

    for single in singles:
        if "train_batch_size" in single.changes:
            options = [{"train_batch_size": b} for b in range(s.train_batch_size - 1, 0, -1)]
        elif "resolution" in single.changes:
            options = _resolution_options(estimate)
        else:
            options = [single.changes]
        best = None
        for option in options:
            option_total = total_with(option)
            if option_total is None:
                continue
            best = (option, option_total)
            if _needs(option_total, free):
                break
        if best is None:
            continue
        changes.update(best[0])
        total = best[1]
        if _needs(total, free):
            break
    text = "all together: " + ", ".join(f"{k} = {v}" for k, v in changes.items())
    return Suggestion(changes, text, total, _needs(total, free))


def refuse_if_too_big(report: FitReport) -> None:
    """Stop a CUDA run that the estimate says will not fit: raise UserError with the verdict and the changes
    that fit (the first one that does, then the whole list).

    A run that does not fit does not always stop with "out of memory": on Windows the NVIDIA driver spills
    into shared system memory, and SDXL then trains 10-100 times slower (kohya_ss #1730, #3296). So a setting
    combination that would spill is refused with the change that fits. "fits", "tight" and "no_gpu" (a CPU
    run) pass. An override setting ("train anyway") may come later: the caller would then skip this call.
    """
    if report.verdict != "too_big" or not report.estimate.on_cuda:
        return
    fitting = [x for x in report.suggestions if x.fits]
    if fitting:
        first = fitting[0]
        advice = f"Change this to make it fit: {first.text} (about {gib(first.total)})."
    else:
        advice = "No change the check knows of makes it fit: use a GPU with more memory."
    raise UserError(
        f"{report.message} Training would run out of GPU memory, or spill into shared memory and run many times slower. "
        f"{advice}\n{report.summary()}"
    )


# The GPU --------------------------------------------------------------------------------------------


def gpu_memory(device: int = 0) -> "Tuple[int, int, str] | None":
    """(free bytes, total bytes, name) of the GPU training would use, or None without an NVIDIA GPU.

    In a process that already uses CUDA (the WebUI, a training job) this is torch.cuda.mem_get_info.
    Elsewhere nvidia-smi answers first: asking torch would create a CUDA context in this process (about
    300 MB that the page would then hold for its whole life, taken from the training job). Without
    nvidia-smi, torch.cuda.mem_get_info is used when CUDA is available.
    """
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return None
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        return _torch_gpu_memory(torch, device)
    answer = _nvidia_smi(device, visible)
    if answer is not None:
        return answer
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    return _torch_gpu_memory(torch, device)


def _torch_gpu_memory(torch: Any, device: int) -> Tuple[int, int, str]:
    free, total = torch.cuda.mem_get_info(device)
    return int(free), int(total), torch.cuda.get_device_name(device)


def _nvidia_smi(device: int, visible: "str | None") -> "Tuple[int, int, str] | None":
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    ids = [part.strip() for part in visible.split(",")] if visible else []
    target = ids[device] if device < len(ids) else str(device)
    try:
        done = subprocess.run([exe, f"--id={target}", "--query-gpu=memory.free,memory.total,name", "--format=csv,noheader,nounits"],
                              capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:
        return None
    return parse_nvidia_smi(done.stdout)


def parse_nvidia_smi(text: str) -> "Tuple[int, int, str] | None":
    """`12000, 16384, Tesla T4` (MiB, MiB, name) -> (free bytes, total bytes, name)."""
    for line in text.strip().splitlines():
        parts = [p.strip() for p in line.split(",", 2)]
        if len(parts) == 3:
            try:
                return int(float(parts[0])) * MiB, int(float(parts[1])) * MiB, parts[2]
            except ValueError:
                return None
    return None


# For the page and the command line -------------------------------------------------------------------


def model_version(settings: Any) -> Tuple[str, str]:
    """(version, how it was found) of the settings' base model, without loading it: cheap reads only.

    A preset: the SDXL presets (`SDXL_PRESETS`, or a preset whose family is "sdxl") are SDXL, the others
    SD 1.5. A local .safetensors file: SDXL when its header has the second text encoder's
    `conditioner.embedders.1.` tensors, else SD 1.x/2.x from its tensor names (models.detect_version). A
    local diffusers folder: SDXL when model_index.json's `_class_name` starts with "StableDiffusionXL", else
    its text encoder's width. A link or repo id is assumed SD 1.x.
    """
    from lora_gradio.engine.train.models import detect_version, preset_for

    spec = (settings.training_model or "").strip().strip('"')
    if spec.lower() in SDXL_PRESETS:
        return "sdxl", f"the {spec} preset is SDXL"
    preset = preset_for(spec)
    if preset is not None:
        if getattr(preset, "family", "sd") == "sdxl":
            return "sdxl", f"the {spec} preset is SDXL"
        return "sd_v1", f"the {spec} preset is SD 1.5"
    path = Path(spec).expanduser()
    if path.is_file():
        if path.suffix.lower() == ".safetensors" and any(k.startswith("conditioner.embedders.1.") for k in _safetensors_keys(path)):
            return "sdxl", f"read from {path.name}"
        return canonical_version(detect_version(path)), f"read from {path.name}"
    index = path / "model_index.json"
    if index.is_file() and str(_read_json(index).get("_class_name", "")).startswith("StableDiffusionXL"):
        return "sdxl", f"read from {index}"
    config = path / "text_encoder" / "config.json"
    if config.is_file():
        hidden = _read_json(config).get("hidden_size", 768)
        return ("sd_v2" if hidden >= 1024 else "sd_v1"), f"read from {config}"
    return "sd_v1", "assumed SD 1.x (the model is not downloaded yet)"


def _safetensors_keys(path: Path) -> List[str]:
    """The tensor names in a .safetensors header (the first 8 + n bytes of the file)."""
    import json
    import struct

    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > 100 * MiB:
                return []
            header = json.loads(f.read(n))
    except (OSError, ValueError, struct.error):
        return []  # not readable as safetensors: detect_version says what is wrong
    return [k for k in header if k != "__metadata__"] if isinstance(header, dict) else []


def _read_json(path: Path) -> Dict[str, Any]:
    import json

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def check_training_memory(settings: Any, version: "str | None" = None, gpu: "Tuple[int, int, str] | None | bool" = True) -> FitReport:
    """Estimate, find the GPU, compare: what the page shows before training starts.

    `version` None finds it from the settings' model; `gpu` True asks `gpu_memory()`, or pass
    (free, total, name) or None (no GPU) yourself.
    """
    note = ""
    if version is None:
        version, note = model_version(settings)
    info = gpu_memory() if gpu is True else gpu
    bf16 = True
    if info is not None:
        bf16 = _bf16_supported(info[2])
    estimate = estimate_memory(settings, version, on_cuda=info is not None, bf16_supported=bf16)
    if note and "assumed" in note:
        estimate.notes.append(f"model version {note}.")
    if info is None:
        return check_fits(estimate, None)
    free, total, name = info
    return check_fits(estimate, free, gpu_name=name, total_bytes=total, bf16_supported=bf16)


def _bf16_supported(name: str) -> bool:
    """bf16 needs an Ampere or newer GPU; older ones (T4, V100, P100, GTX 10/16, RTX 20) train in fp16.
    fp16 and bf16 take the same memory, so this only changes the label."""
    old = ("T4", "V100", "P100", "P4", "K80", "GTX", "RTX 20", "TITAN")
    return not any(tag.lower() in name.lower() for tag in old)
