"""The walkthrough's mathematics, in LaTeX, rendered to MathML by latex2mathml.

PAPER holds the numbered equations of the EC-DiT paper (Sun et al., Sec. 2.1-2.3), transcribed
from ../shared/papers/ec-dit-paper.md as printed, each with the project's reading where the
printed form differs (docs/errata.md). FUNCTIONS holds, for every public function of the spec,
the formula it computes in the project's notation (data at t = 0, tokens as rows, shapes of
docs/equations.md's glossary) and where that formula comes from.

Rendering refuses to leave TeX behind: latex2mathml turns an unknown macro into an identifier
that still reads `\\foo`, so `render` raises MathError for any backslash left in the MathML's text.
"""
from __future__ import annotations

import html
import re
from dataclasses import dataclass

import latex2mathml.converter


class MathError(ValueError):
    """A formula that does not render to MathML (an unknown macro, or no formula at all)."""


@dataclass(frozen=True)
class Formula:
    source: str                  # where it comes from: "Eq. 6", "Algorithm 1", "GShard", "deviation", ...
    latex: tuple[str, ...]       # one display line each


@dataclass(frozen=True)
class PaperEquation:
    number: int
    title: str
    printed: str                 # LaTeX, as the paper prints it
    here: str | None = None      # LaTeX of the project's reading, where it differs
    erratum: str | None = None   # the heading of docs/errata.md that explains the difference


def _f(source: str, *latex: str) -> Formula:
    return Formula(source, tuple(latex))


PAPER = {
    1: PaperEquation(
        1, "the rectified-flow objective",
        r"\mathcal{L}(\theta) = \mathbb{E}_{t \sim \pi(t),\, \epsilon \sim \mathcal{N}(0,1)}"
        r"\left[\left\lVert \mathbf{x}_1 - \mathbf{x}_0 - v_\theta(\mathbf{x}_t, t) \right\rVert^2\right],"
        r"\quad \mathbf{x}_t = t\,\mathbf{x} + (1-t)\,\epsilon",
        r"\mathcal{L}(\theta) = \mathbb{E}_{t,\epsilon}\left[\left\lVert (\epsilon - x_0) - v_\theta(x_t, t) \right\rVert^2\right],"
        r"\quad x_t = (1-t)\,x_0 + t\,\epsilon,\quad t = \operatorname{sigmoid}(u),\ u \sim \mathcal{N}(\mu, \sigma)",
        "Eq. 1: direction of the path"),
    2: PaperEquation(
        2, "queries from the image, keys and values from the text",
        r"\mathbf{Q}_x = \mathbf{x}\,\mathbf{W}_x^{\mathrm{query}},\quad"
        r"\mathbf{K}_y = \operatorname{Enc}(\mathbf{y})\,\mathbf{W}_y^{\mathrm{key}},\quad"
        r"\mathbf{V}_y = \operatorname{Enc}(\mathbf{y})\,\mathbf{W}_y^{\mathrm{value}}"),
    3: PaperEquation(
        3, "one cross-attention head",
        r"\mathbf{C}_h = \operatorname{softmax}\left(\frac{\mathbf{Q}_x \mathbf{K}_y^\top}{\sqrt{d_x}}\right)\mathbf{V}_y",
        r"\mathbf{C}_h = \operatorname{softmax}\left(\frac{\mathbf{Q}_{x,h} \mathbf{K}_{y,h}^\top}{\sqrt{H}}\right)"
        r"\mathbf{V}_{y,h},\quad H = d_x / N",
        "Eq. 3: the attention scale"),
    4: PaperEquation(
        4, "the router's input",
        r"\mathbf{x}' = \mathbf{x}_s + \operatorname{MHCA}(\mathbf{x}_s) \in \mathbb{R}^{S \times d_x}",
        r"x_p = \operatorname{modulate}(\operatorname{LN}(x'),\ \beta_{\mathrm{mlp}},\ \gamma_{\mathrm{mlp}})"
        r"\ \text{is routed and sent to the experts}",
        "Eq. 4: what the router sees"),
    5: PaperEquation(
        5, "token-expert affinity",
        r"\mathbf{A}_{s,i} = \frac{\exp\left((\mathbf{x}' \mathbf{W}_r)_{s,i}\right)}"
        r"{\sum_{i=1}^{E} \exp\left((\mathbf{x}' \mathbf{W}_r)_{s,i}\right)}"),
    6: PaperEquation(
        6, "each expert keeps its top-C tokens",
        r"\mathbf{G}_{s,i} = \begin{cases} \mathbf{A}_{s,i}, & \mathbf{A}_{s,i} \in "
        r"\operatorname{top}\text{-}k\left(\{\mathbf{A}_{s,i} \mid 1 \le s \le S\},\ k = C\right) \\ 0, & \text{otherwise} \end{cases}",
        r"\text{ties in top-}C\text{ go to the lower token index};\quad C = \operatorname{round}(S f_c / E),\ "
        r"\text{halves up}",
        "Eq. 6: ties"),
    7: PaperEquation(
        7, "the tokens expert i processes",
        r"\mathcal{I}_i = \{ s \mid \mathbf{G}_{s,i} > 0,\ 1 \le s \le S \}"),
    8: PaperEquation(
        8, "the weighted combine",
        r"\mathbf{x}_{\mathrm{out}} = \sum_{i=1}^{E} (\mathbf{G}_{\mathcal{I}_i,i})^\top\,"
        r"\mathcal{E}_i(\mathbf{x}'_{\mathcal{I}_i,:})"),
}

# Algorithm 1 of the paper is code, not an equation; its rows are shown through the one-hot layer.

FUNCTIONS = {
    # --- primitives -----------------------------------------------------------------------------
    "primitives.softmax": _f(
        "Eq. 5's softmax",
        r"\operatorname{softmax}(x)_i = \frac{e^{x_i - m}}{\sum_j e^{x_j - m}},\quad m = \max_j x_j"),
    "primitives.gelu_tanh": _f(
        "GELU, tanh form (Hendrycks & Gimpel)",
        r"\operatorname{GeLU}(x) = \tfrac{1}{2}\,x\left(1 + \tanh\left(\sqrt{2/\pi}\,(x + 0.044715\,x^3)\right)\right)"),
    "primitives.layer_norm": _f(
        "LayerNorm without affine (DiT)",
        r"\operatorname{LN}(x) = \frac{x - \mu}{\sqrt{\sigma^2 + \varepsilon}},\quad"
        r"\mu = \tfrac{1}{D}\sum_{j} x_j,\quad \sigma^2 = \tfrac{1}{D}\sum_{j} (x_j - \mu)^2"),
    "primitives.feed_forward": _f(
        "Sec. 2.3, the dense FFN",
        r"\operatorname{FFN}(x) = \operatorname{GeLU}(x W_1)\, W_2"),
    "primitives.sigmoid": _f(
        "the logistic function",
        r"\operatorname{sigmoid}(x) = \frac{1}{1 + e^{-x}} = \tfrac{1}{2}\left(1 + \tanh\tfrac{x}{2}\right)"),
    "primitives.silu": _f(
        "SiLU (DiT's conditioning)",
        r"\operatorname{SiLU}(x) = x\,\operatorname{sigmoid}(x)"),
    # --- flow -----------------------------------------------------------------------------------
    "flow.logit_normal_timesteps": _f(
        "Eq. 1, π(t)",
        r"t = \operatorname{sigmoid}(\mu + \sigma z),\quad z \sim \mathcal{N}(0, 1)"),
    "flow.interpolate": _f(
        "Eq. 1, the path",
        r"x_t = (1 - t)\,x_0 + t\,\epsilon"),
    "flow.velocity_target": _f(
        "Eq. 1, the target",
        r"v^\star = \frac{d x_t}{d t} = \epsilon - x_0"),
    "flow.velocity_from_x0": _f(
        "deviation: x-prediction (Li & He 2025)",
        r"v = \frac{x_t - \hat{x}_0}{\max(t, t_{\min})}"),
    "flow.rectified_flow_loss": _f(
        "Eq. 1, the loss",
        r"\mathcal{L} = \frac{1}{B}\sum_{b=1}^{B} w_b\, \frac{1}{n}\left\lVert (\epsilon_b - x_{0,b}) - v_b \right\rVert^2,"
        r"\quad w_b = 1 \text{ unless weights are given}"),
    "flow.loss_weights": _f(
        "deviation: per-sample weights",
        r"w_b = \max(t_b, t_{\min})^2 \ \text{for weighting x0};\qquad \text{none for velocity (Eq. 1 as printed)}"),
    "flow.euler_sample": _f(
        "Euler's method for dx = v dt",
        r"x_{t_{i+1}} = x_{t_i} + (t_{i+1} - t_i)\, v(x_{t_i}, t_i),\quad t_i = 1 - \tfrac{i}{T},\ i = 0, \dots, T-1"),
    # --- attention ------------------------------------------------------------------------------
    "attention.self_attention": _f(
        "Table 1: grouped-query self-attention",
        r"\mathrm{head}_n = \operatorname{softmax}\left(\frac{Q_n K_{\lfloor n/R \rfloor}^\top}{\sqrt{H}}\right)"
        r"V_{\lfloor n/R \rfloor},\quad \mathrm{out} = [\mathrm{head}_1, \dots, \mathrm{head}_N]\, W_o"),
    "attention.cross_attention": _f(
        "Eq. 2-3",
        r"Q_x = x W_q,\quad K_y = \operatorname{Enc}(y) W_k,\quad V_y = \operatorname{Enc}(y) W_v",
        r"C_h = \operatorname{softmax}\left(\frac{Q_{x,h} K_{y,h}^\top}{\sqrt{H}}\right) V_{y,h},\quad"
        r"\operatorname{MHCA}(x) = [C_1, \dots, C_N]\, W_{\mathrm{out}}"),
    # --- routing --------------------------------------------------------------------------------
    "routing.expert_capacity": _f(
        "Sec. 2.3, the capacity",
        r"C = \operatorname{round}\left(\frac{S f_c}{E}\right) = \left\lfloor \frac{S f_c}{E} + \tfrac{1}{2} \right\rfloor,"
        r"\quad 1 \le C \le S"),
    "routing.group_tokens": _f(
        "Sec. 3.1, routing groups",
        r"\mathbb{R}^{B \times S \times D} \to \mathbb{R}^{G \times g \times D},\quad G = BS / g"),
    "routing.ungroup_tokens": _f(
        "Sec. 3.1, routing groups",
        r"\mathbb{R}^{G \times g \times D} \to \mathbb{R}^{B \times S \times D}"),
    "routing.router_affinity": _f(
        "Eq. 5",
        r"A_{s,i} = \frac{\exp\left((x' W_r)_{s,i}\right)}{\sum_{j=1}^{E} \exp\left((x' W_r)_{s,j}\right)}"),
    "routing.expert_choice_gating": _f(
        "Eq. 6",
        r"G_{s,i} = \begin{cases} A_{s,i}, & s \in \operatorname{top}_C\left(A_{1,i}, \dots, A_{S,i}\right) \\"
        r" 0, & \text{otherwise} \end{cases}"),
    "routing.dispatch": _f(
        "Eq. 7",
        r"\mathcal{I}_i = \{ s \mid G_{s,i} > 0 \},\qquad x^{\mathrm{in}}_{i,c} = x'_{\,\mathrm{index}_{i,c}}"),
    "routing.expert_ffn": _f(
        "Sec. 2.3, the experts",
        r"\mathcal{E}_i(x) = \operatorname{GeLU}(x W_1^{i})\, W_2^{i}"),
    "routing.combine": _f(
        "Eq. 8",
        r"x_{\mathrm{out},s} = \sum_{i \,:\, s \in \mathcal{I}_i} G_{s,i}\, \mathcal{E}_i(x'_s)"),
    "routing.experts_per_token": _f(
        "Fig. 6, compute per token",
        r"n_s = \left|\{ i \mid s \in \mathcal{I}_i \}\right|,\quad \sum_s n_s = E\,C"),
    "routing.expert_choice_moe": _f(
        "Eq. 5-8, the layer",
        r"x_{\mathrm{out},s} = \sum_{i \,:\, s \in \operatorname{top}_C(A_{:,i})} A_{s,i}\, \mathcal{E}_i(x'_s),"
        r"\quad A = \operatorname{softmax}_E(x' W_r)"),
    "routing.expert_choice_moe_onehot": _f(
        "Algorithm 1",
        r"P_{i,c,s} = [\,\mathrm{index}_{i,c} = s\,],\quad x^{\mathrm{in}}_{i,c} = \sum_{s} P_{i,c,s}\, x'_s,"
        r"\quad x_{\mathrm{out},s} = \sum_{i,c} P_{i,c,s}\, G_{i,c}\, \mathcal{E}_i(x^{\mathrm{in}}_{i,c})"),
    # --- token choice ---------------------------------------------------------------------------
    "token_choice.top_k_experts": _f(
        "GShard, Algorithm 1",
        r"e_{s,1..k} = \operatorname{top}_k\left(A_{s,1}, \dots, A_{s,E}\right),\quad "
        r"w_{s,r} = \frac{A_{s,e_{s,r}}}{\sum_{r'=1}^{k} A_{s,e_{s,r'}}}"),
    "token_choice.token_choice_gating": _f(
        "GShard, Algorithm 1",
        r"p_{s,r} = \#\{ (r', s') \prec (r, s) \mid e_{s',r'} = e_{s,r} \},\quad"
        r"\mathrm{kept}_{s,r} = [\, p_{s,r} < C \,]"),
    "token_choice.load_balancing_loss": _f(
        "GShard's auxiliary loss",
        r"\ell_{\mathrm{aux}} = E \sum_{e=1}^{E} f_e\, P_e,\quad f_e = \tfrac{1}{S}\,\#\{ s \mid e_{s,1} = e \},"
        r"\quad P_e = \tfrac{1}{S}\sum_{s} A_{s,e}"),
    "token_choice.token_choice_moe": _f(
        "GShard top-k, with Eq. 5, 7, 8",
        r"x_{\mathrm{out},s} = \sum_{r \,:\, \mathrm{kept}_{s,r}} w_{s,r}\, \mathcal{E}_{e_{s,r}}(x'_s)"),
    # --- DiffMoE --------------------------------------------------------------------------------
    "diffmoe.capacity_predictor": _f(
        "DiffMoE, the capacity predictor",
        r"P = \operatorname{SiLU}\left(\operatorname{sg}(x)\, W_1 + b_1\right) W_2 + b_2"),
    "diffmoe.predictor_loss": _f(
        "DiffMoE, the predictor's loss",
        r"\mathcal{L}_{\mathrm{pred}} = \operatorname{mean}_{t,e}"
        r"\left[\max(P_{t,e}, 0) - P_{t,e} M_{t,e} + \log\left(1 + e^{-|P_{t,e}|}\right)\right]"),
    "diffmoe.update_threshold": _f(
        "DiffMoE, the threshold",
        r"\tau_e \leftarrow d\, \tau_e + (1 - d)\, q_e"),
    "diffmoe.pool_moe": _f(
        "DiffMoE, training: expert choice over a pool",
        r"k = \operatorname{round}(N f_c / E),\quad x_{\mathrm{out},t} = \sum_{e \,:\, t \in \operatorname{top}_k(A_{:,e})}"
        r" A_{t,e}\, \mathcal{E}_e(x_t)",
        r"q_e = \text{the } k\text{-th largest of } \operatorname{sigmoid}(P_{1,e}), \dots, \operatorname{sigmoid}(P_{N,e})"),
    "diffmoe.pool_moe_dynamic": _f(
        "DiffMoE, inference: dynamic capacity",
        r"k_e = \#\{ t \mid \operatorname{sigmoid}(P_{t,e}) > \tau_e \},\quad "
        r"x_{\mathrm{out},t} = \sum_{e \,:\, t \in \operatorname{top}_{k_e}(A_{:,e})} A_{t,e}\, \mathcal{E}_e(x_t)"),
    "diffmoe.diffmoe_moe": _f(
        "DiffMoE, training",
        r"\text{one pool of } N = B S \text{ tokens: } \operatorname{pool\_moe}\text{ on } x \in \mathbb{R}^{1 \times BS \times D}"),
    "diffmoe.diffmoe_moe_dynamic": _f(
        "DiffMoE, inference",
        r"\text{one pool of } N = B S \text{ tokens: } \operatorname{pool\_moe\_dynamic}\text{ on } "
        r"x \in \mathbb{R}^{1 \times BS \times D}"),
    # --- blocks ---------------------------------------------------------------------------------
    "blocks.sinusoidal_embedding": _f(
        "DiT's timestep features",
        r"\omega_j = T_{\max}^{-j/(d/2)},\quad \operatorname{emb}(t) = "
        r"\left[\cos(1000\, t\, \omega),\ \sin(1000\, t\, \omega)\right]"),
    "blocks.timestep_mlp": _f(
        "Sec. 2.3, the timestep MLP",
        r"c = \operatorname{SiLU}\left(\operatorname{emb}(t)\, W_1 + b_1\right) W_2 + b_2"),
    "blocks.adaln_modulation": _f(
        "DiT, AdaLN-Zero",
        r"(\beta_{\mathrm{msa}}, \gamma_{\mathrm{msa}}, \alpha_{\mathrm{msa}}, \beta_{\mathrm{mlp}}, \gamma_{\mathrm{mlp}},"
        r" \alpha_{\mathrm{mlp}}) = \operatorname{SiLU}(c)\, W + b"),
    "blocks.modulate": _f(
        "DiT, AdaLN",
        r"\operatorname{modulate}(x, \beta, \gamma) = x \odot (1 + \gamma) + \beta"),
    "blocks.dit_block": _f(
        "Eq. 4 and Fig. 2",
        r"x_s = x + \alpha_{\mathrm{msa}} \odot \operatorname{SA}\left(\operatorname{modulate}(\operatorname{LN}(x),"
        r" \beta_{\mathrm{msa}}, \gamma_{\mathrm{msa}})\right)",
        r"x' = x_s + \operatorname{MHCA}(x_s, \operatorname{Enc}(y))",
        r"\mathrm{out} = x' + \alpha_{\mathrm{mlp}} \odot \operatorname{MoE}\left(\operatorname{modulate}"
        r"(\operatorname{LN}(x'), \beta_{\mathrm{mlp}}, \gamma_{\mathrm{mlp}})\right)"),
    # --- model ----------------------------------------------------------------------------------
    "model.patchify": _f(
        "Sec. 2.1, patches",
        r"\mathbb{R}^{B \times I \times J \times Ch} \to \mathbb{R}^{B \times S \times p^2 Ch},\quad"
        r"\text{token } s = i\,(J/p) + j"),
    "model.unpatchify": _f(
        "Sec. 2.1, patches",
        r"\mathbb{R}^{B \times S \times p^2 Ch} \to \mathbb{R}^{B \times I \times J \times Ch}"),
    "model.sincos_embedding_2d": _f(
        "MAE / DiT positions",
        r"\omega_j = 10000^{-j/(D/4)},\quad \mathrm{pos}(r, c) = \left[\sin(r\omega), \cos(r\omega),"
        r" \sin(c\omega), \cos(c\omega)\right]"),
    "model.positional_embedding": _f(
        "Sec. 2.1, positions",
        r"\mathrm{pos} \in \mathbb{R}^{S \times D}:\ \text{the sin-cos table, or a learned table}"),
    "model.embed_patches": _f(
        "Sec. 2.1, the patch embedding",
        r"h = \operatorname{patchify}(x_t)\, W + b + \mathrm{pos}"),
    "model.keep_tokens": _f(
        "Sec. 3.1, masking (MaskDiT)",
        r"h'_{b,s'} = h_{b,\ \mathrm{keep}_{b,s'}},\quad s' = 1, \dots, S'"),
    "model.null_caption": _f(
        "classifier-free guidance's empty caption",
        r"y_\varnothing = (\langle \mathrm{null} \rangle, \langle \mathrm{pad} \rangle, \dots, \langle \mathrm{pad} \rangle)"),
    "model.text_encoder": _f(
        "deviation: Enc(y) of Sec. 2.2",
        r"h = \mathrm{Embed}[y] + \mathrm{Pos},\quad h \leftarrow h + \operatorname{MHA}(\operatorname{LN}(h)),"
        r"\quad h \leftarrow h + \operatorname{FFN}(\operatorname{LN}(h)),\quad \operatorname{Enc}(y) = \operatorname{LN}(h)"),
    "model.timestep_condition": _f(
        "Sec. 2.3",
        r"c = \operatorname{MLP}\left(\operatorname{emb}(t)\right)"),
    "model.pooled_text": _f(
        "deviation: the pooled caption",
        r"c \leftarrow c + \frac{\sum_{l} m_l \operatorname{Enc}(y)_l}{\sum_{l} m_l}\, W + b"),
    "model.model_block": _f(
        "Fig. 2, with the config's settings",
        r"(x, \mathrm{routing}) \leftarrow \operatorname{dit\_block}(x, c, \operatorname{Enc}(y))"),
    "model.final_layer": _f(
        "DiT's final layer",
        r"v = \operatorname{modulate}\left(\operatorname{LN}(x), \beta, \gamma\right) W + b,\quad"
        r"(\beta, \gamma) = \operatorname{SiLU}(c)\, W' + b'"),
    "model.forward": _f(
        "Eq. 1's network",
        r"v_\theta(x_t, t, y) = \operatorname{final}\left(\operatorname{block}_L \circ \dots \circ"
        r" \operatorname{block}_1(\operatorname{embed}(x_t)),\ c\right)"),
    "model.velocity": _f(
        "Eq. 1's network, whole images",
        r"v = \operatorname{unpatchify}\left(v_\theta(x_t, t, y)\right)"),
    # --- objective ------------------------------------------------------------------------------
    "objective.caption_dropout": _f(
        "classifier-free guidance's training",
        r"y_b \leftarrow y_\varnothing \ \text{where } \mathrm{drop}_b"),
    "objective.flow_matching_loss": _f(
        "Eq. 1 on the kept tokens",
        r"\mathcal{L}_{\mathrm{flow}} = \operatorname{mean}_{b, s' , j}\left((\epsilon - x_0)_{b, \mathrm{keep}_{b,s'}, j}"
        r" - v_\theta(x_t, t, y)_{b,s',j}\right)^2"),
    "objective.shape_label_loss": _f(
        "deviation: the shape head",
        r"\mathcal{L}_{\mathrm{shape}} = -\operatorname{mean}_{b,s} \log \operatorname{softmax}"
        r"\left(\operatorname{LN}(h_{b,s})\, W + b\right)_{\ell_{b,s}}"),
    "objective.routing_stats": _f(
        "Fig. 6's statistics",
        r"\mathrm{unrouted} = \operatorname{mean}_s [\, n_s = 0 \,],\quad \operatorname{mean}_s n_s,\quad"
        r"\max_s n_s,\quad \operatorname{std}_s n_s"),
    "objective.training_loss": _f(
        "Sec. 3.1, the loss of one step",
        r"\mathcal{L} = \mathcal{L}_{\mathrm{flow}} + \lambda_{\mathrm{aux}} \sum_{l} \ell_{\mathrm{aux},l}"
        r" + \lambda_{\mathrm{pred}} \sum_{l} \mathcal{L}_{\mathrm{pred},l} + \lambda_{\mathrm{shape}}\,"
        r"\mathcal{L}_{\mathrm{shape}}"),
    "objective.update_thresholds": _f(
        "DiffMoE, every layer's threshold",
        r"\tau_l \leftarrow d\, \tau_l + (1 - d)\, q_l \quad \text{for each layer } l \text{ with a predictor}"),
    # --- sample ---------------------------------------------------------------------------------
    "sample.guided_velocity": _f(
        "classifier-free guidance",
        r"\tilde{v}(x, t) = v(x, t, y_\varnothing) + s\left(v(x, t, y) - v(x, t, y_\varnothing)\right)"),
    "sample.sample": _f(
        "Euler from t = 1 to 0",
        r"x_{t - \Delta t} = x_t - \Delta t\; \tilde{v}(x_t, t),\quad \Delta t = 1/T"),
}


_TEXT = re.compile(r">([^<]*)<")


def render(latex: str, display: bool = True, where: str = "") -> str:
    """MathML for one formula; MathError naming `where` when anything of the TeX is left."""
    if not latex.strip():
        raise MathError(f"{where}: empty formula")
    try:
        mathml = latex2mathml.converter.convert(latex, display="block" if display else "inline")
    except Exception as e:                                       # the converter's own parse errors
        raise MathError(f"{where}: cannot render {latex!r}: {e}") from None
    leftovers = [html.unescape(t) for t in _TEXT.findall(mathml) if "\\" in html.unescape(t)]
    if leftovers:
        raise MathError(f"{where}: unknown TeX {', '.join(sorted(set(leftovers)))} in {latex!r} (the page would "
                        "show raw TeX)")
    return mathml
