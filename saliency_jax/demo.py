"""`saliency-jax demo`: the whole product on the bundled photographs, into one browsable folder.

Predictions, saliency maps by every attribution method, class models
(Simonyan et al. 2014, Sec. 2), weakly supervised localisation boxes
(Sec. 3.2) and what a layer's channels respond to (deconvnet projections of
their strongest activations, Zeiler & Fergus 2014; Sec. 4), written as PNGs
with an `index.html` that shows them all.
"""

from __future__ import annotations

import html
import pathlib
import sys
from typing import Callable

import jax
import numpy as np

DEMO_CLASSES = (130, 285, 417, 947, 963, 967)  # flamingo, Egyptian cat, balloon, mushroom, pizza, espresso
QUICK_METHODS = ("vanilla", "guided", "gradcam")
# Affordable options of the slow perturbation methods in the full demo (a few hundred forward passes each).
DEMO_OPTIONS = {"rise": {"num_masks": 500}, "shapley_sampling": {"num_permutations": 4},
                "kernel_shap": {"num_samples": 200}, "lime": {"num_samples": 200}, "xrai": {"num_steps": 16},
                "occlusion": {"window": 32, "stride": 16},
                "guided_ig": {"num_steps": 50}, "blur_ig": {"num_steps": 50},  # path methods: one gradient a step
                "scorecam": {"layer": "block15"}}  # one forward per channel: 320 channels, not the head's 1280
# Maps that seed the localisation boxes: the paper's gradient, and SmoothGrad's, whose seeds sit on
# the object rather than spread over the photo (chelsea: the cat's face instead of its chin).
LOCALIZE_SEEDS = ("vanilla", "smoothgrad")
FEATURE_LAYER = "block5"  # receptive field 83 px at 224: patches that still show a part of the photo


def run_demo(
    out: str | pathlib.Path,
    *,
    quick: bool = False,
    model_name: str = "efficientnet_lite0",
    classes=DEMO_CLASSES,
    log: Callable[[str], None] = lambda s: print(s, file=sys.stderr),
) -> pathlib.Path:
    """Runs everything on the bundled images; returns the path of `index.html`.

    Args:
      out: output folder (created).
      quick: two photos, three methods, few optimisation steps (seconds, for tests).
      model_name: zoo model.
      classes: classes to draw class models for.
      log: progress messages.
    """
    from saliency_jax import images, load_model, render
    from saliency_jax.methods import available_methods

    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model = load_model(model_name)
    bundled = images.bundled_images()
    names = ["chelsea", "coffee"] if quick else list(bundled)
    photos = [images.load_image(bundled[n]) for n in names]
    methods = QUICK_METHODS if quick else tuple(available_methods())
    classes = tuple(classes[:2]) if quick else tuple(classes)

    log(f"[1/5] predicting {len(photos)} bundled photos with {model_name}")
    top5 = model.predict(photos, top=5)
    targets = np.array([t[0][0] for t in top5], np.int32)
    for name, photo in zip(names, photos):
        render.save_png(out / f"{name}.png", photo)

    log(f"[2/5] saliency maps: {', '.join(methods)}")
    sal = _saliency_maps(model, names, photos, targets, methods, out, quick=quick)

    log(f"[3/5] class models for {len(classes)} classes (paper preset: argmax S_c(I) - lambda ||I||^2; "
        "lucid preset: Fourier image, transforms)")
    check = _class_models(model, classes, out, quick=quick)

    log("[4/5] weakly supervised localisation (saliency-seeded GrabCut)")
    boxes, localize_note = _localization_boxes(model, names, photos, targets, sal, out)

    log(f"[5/5] what {FEATURE_LAYER}'s strongest channels respond to (deconvnet and guided projections)")
    channels = _feature_grids(model, photos, out, quick=quick)

    index = out / "index.html"
    index.write_text(_page(model, names, top5, methods, classes, check, boxes, localize_note, channels))
    return index


def _saliency_maps(model, names, photos, targets, methods, out: pathlib.Path, *, quick: bool) -> dict:
    """Writes <photo>_<method>.png and its overlay for every method; returns {method: maps [N,H,W]}."""
    from saliency_jax import maps, render
    from saliency_jax.methods import attribute, get, option_names

    x = model.preprocess(photos)
    sal = {}
    for method in methods:
        opts = {"num_samples": 4, "num_steps": 8} if quick else DEMO_OPTIONS.get(method, {})
        value = get(method, **{k: v for k, v in opts.items() if k in option_names(method)})
        grads = attribute(model, x, targets, method=value, key=jax.random.key(0))
        sal[method] = np.asarray(maps.saliency_map(grads, relative=value.display_relative))
        for name, photo, s in zip(names, photos, sal[method]):
            render.save_png(out / f"{name}_{method}.png", render.colorize(s, size=photo.shape[:2]))
            render.save_png(out / f"{name}_{method}_overlay.png", render.overlay(photo, s))
    return sal


CLASS_MODEL_PRESETS = ("paper", "lucid")  # the paper's faithful images, and Lucid's recognisable ones


def _class_models(model, classes, out: pathlib.Path, *, quick: bool) -> dict:
    """Writes class_model_<preset>_<c>.png for each of `CLASS_MODEL_PRESETS`; returns
    {preset: the model's top-1 on each image}."""
    from saliency_jax import render
    from saliency_jax.maximize import class_model

    check = {}
    for preset in CLASS_MODEL_PRESETS:
        vis = class_model(model, list(classes), preset=preset, key=jax.random.key(0),
                          **({"num_steps": 5} if quick else {}))
        for c, pixels in zip(classes, vis.pixels):
            render.save_png(out / f"class_model_{preset}_{c}.png", pixels)
        check[preset] = model.predict(list(vis.pixels), top=1)
    return check


def _localization_boxes(model, names, photos, targets, sal: dict, out: pathlib.Path) -> tuple[dict, str]:
    """Writes <photo>_box.png seeded by each of `LOCALIZE_SEEDS`' maps; returns
    ({photo: {method: box}}, "" or why localisation was skipped: OpenCV missing)."""
    from saliency_jax import render

    try:
        from saliency_jax.localize import draw_boxes, import_cv2, localize

        import_cv2()
    except ImportError as err:
        return {}, str(err)
    boxes = {}
    seeded_by = [m for m in LOCALIZE_SEEDS if m in sal]
    for i, (name, photo, t) in enumerate(zip(names, photos, targets)):
        boxes[name] = {m: localize(photo, sal[m][i]).box for m in seeded_by}
        labels = [f"{model.labels[t]} ({m})" for m in seeded_by]
        render.save_png(out / f"{name}_box.png", draw_boxes(photo, list(boxes[name].values()), labels))
    return boxes, ""


FEATURE_RULES = ("deconvnet", "guided")  # on Lite0 (no max-pool switches) the deconvnet barely sees the input


def _feature_grids(model, photos, out: pathlib.Path, *, quick: bool) -> list[int]:
    """Writes features_<layer>_chNNNN_<rule>.png for the layer's strongest channels, for each of
    `FEATURE_RULES`; returns those channels."""
    from saliency_jax import render
    from saliency_jax.features import feature_figure, layer_shape, top_activations

    num_channels = layer_shape(model, FEATURE_LAYER, [0])[-1]
    k, per_image = (4, 2) if quick else (9, 3)
    result = top_activations(model, photos, FEATURE_LAYER, range(num_channels), k=k, per_image=per_image,
                             min_distance=2, progress=False)
    channels = result.strongest(2 if quick else 4)
    for rule in FEATURE_RULES:
        for c, grid in zip(channels, feature_figure(model, result.select(channels), rule=rule)):
            render.save_png(out / f"features_{FEATURE_LAYER}_ch{c:04d}_{rule}.png", grid)
    return channels


def _img(src: str, caption: str, width: int = 224) -> str:
    return (f'<figure><img src="{html.escape(src)}" width="{width}" loading="lazy">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def _page(model, names, top5, methods, classes, check, boxes, localize_note, channels) -> str:
    parts = [
        "<!doctype html><meta charset='utf-8'><title>saliency_jax demo</title>",
        "<style>body{font-family:sans-serif;margin:2em}figure{display:inline-block;margin:4px;"
        "text-align:center;font-size:12px}table{border-collapse:collapse}td,th{padding:2px 8px;"
        "border-bottom:1px solid #ddd;text-align:left}</style>",
        f"<h1>saliency_jax demo: {html.escape(model.name)}</h1>",
        "<p>Simonyan, Vedaldi &amp; Zisserman (2014), <i>Deep Inside Convolutional Networks</i>, "
        "re-implemented in JAX. Every map explains the image's top-1 class.</p>",
        "<h2>Image-specific class saliency (Sec. 3) and other attribution methods</h2>",
    ]
    for name, top in zip(names, top5):
        rows = "".join(f"<tr><td>{c}</td><td>{html.escape(l)}</td><td>{100 * p:.1f}%</td></tr>"
                       for c, l, p in top)
        parts.append(f"<h3>{html.escape(name)}</h3><table><tr><th>class</th><th>label</th>"
                     f"<th>probability</th></tr>{rows}</table>")
        parts.append(_img(f"{name}.png", "photo"))
        parts += [_img(f"{name}_{m}.png", m) for m in methods]
        parts.append("<br>")
        parts += [_img(f"{name}_{m}_overlay.png", f"{m} overlay") for m in methods]
    parts.append("<h2>Class models (Sec. 2): argmax<sub>I</sub> S<sub>c</sub>(I) &minus; &lambda;&Vert;I&Vert;"
                 "<sup>2</sup></h2><p>Top row: the paper's preset (pixels, L2 penalty, no transforms): "
                 "faithful to the objective, the model is certain of each class, yet to a person they look "
                 "like noise on EfficientNet-Lite0. Bottom row: the Lucid preset (a Fourier, "
                 "decorrelated-colour image under jitter, scale and rotation), which keeps the "
                 "recognisable parts.</p>")
    for preset in CLASS_MODEL_PRESETS:
        for c, (pred,) in zip(classes, check[preset]):
            parts.append(_img(f"class_model_{preset}_{c}.png",
                              f"{preset}: {model.labels[c]} ({c}); model says {pred[1]} {100 * pred[2]:.0f}%",
                              width=160))
        parts.append("<br>")
    parts.append("<h2>Weakly supervised localisation (Sec. 3.2)</h2>")
    if localize_note:
        parts.append(f"<p>Skipped: {html.escape(localize_note)}</p>")
    if boxes:
        parts.append("<p>GrabCut seeded by each map's top 5% (foreground) and bottom 30% (background) "
                     "pixels; the box holds the largest foreground component. The paper seeds from the "
                     "gradient (vanilla); SmoothGrad's less noisy map is shown beside it.</p>")
    for name, by_method in boxes.items():
        caption = "; ".join(f"{m} {box}" for m, box in by_method.items())
        parts.append(_img(f"{name}_box.png", f"{name}: {caption}", width=320))
    parts.append(f"<h2>What {FEATURE_LAYER}'s channels respond to (Sec. 4: the deconvnet is the gradient "
                 "with another ReLU rule)</h2><p>Each channel's strongest activations over the photos, "
                 "projected to pixels (left of each grid), beside the patch of the photo in the unit's "
                 "receptive field (right): with the deconvnet rule, and with guided backprop, which also "
                 "masks by the forward ReLUs and so shows what in <i>this</i> patch drove the unit.</p>")
    for c in channels:
        for rule in FEATURE_RULES:
            parts.append(_img(f"features_{FEATURE_LAYER}_ch{c:04d}_{rule}.png",
                              f"{FEATURE_LAYER} channel {c} ({rule})", width=420))
        parts.append("<br>")
    return "\n".join(parts) + "\n"
