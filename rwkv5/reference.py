"""The readable NumPy twin of the C forward pass: the oracle every other test compares with.

It follows docs/model.md §4 (recurrent) and §6 (parallel, chunked) literally and runs in
float64 by default. It is slow on purpose: clarity over speed. Usage:

    >>> from rwkv5.reference import ReferenceModel
    >>> from rwkv5.testing import random_state_dict
    >>> ref = ReferenceModel(random_state_dict("5.2", n_layer=1, n_embd=64, head_size=16), gn_eps=64e-5)
    >>> logits, state = ref.forward([1, 2, 3], mode="parallel")
    >>> logits.shape
    (256,)

Notation (docs/model.md §1): C = n_embd, A = H*N = dim_att, F = n_ffn, V = vocab; vectors are rows, a
PyTorch weight W of shape (out, in) computes y = x @ W.T. The wkv state S has layout
[h][i][j] with i the key channel and j the value channel.
"""

from __future__ import annotations

import numpy as np

from ._checkpoint import as_float, decay_and_bonus, detect_architecture

LN_EPS = 1e-5  # every LayerNorm (ln0, ln1, ln2, ln_out): PyTorch's default
GN_EPS_RWKV_LM = (
    64e-5  # = GroupNorm(y / 8, eps=1e-5): what RWKV-LM trains 5.1/5.2 with (docs/model.md §2.1)
)


# ----------------------------------------------------------------------------------------------
# Position-wise pieces


def layer_norm(x, weight, bias, eps=LN_EPS):
    """LN(x) = (x - mean) / sqrt(var + eps) * weight + bias over the last axis (biased variance)."""
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * weight + bias


def group_norm(x, weight, bias, n_groups, eps):
    """GroupNorm over the last axis cut into n_groups contiguous slices, each normalised like LN,
    then the per-channel affine (weight, bias have the full length)."""
    shape = x.shape
    g = x.reshape(shape[:-1] + (n_groups, shape[-1] // n_groups))
    mu = g.mean(-1, keepdims=True)
    var = ((g - mu) ** 2).mean(-1, keepdims=True)
    return ((g - mu) / np.sqrt(var + eps)).reshape(shape) * weight + bias


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def token_shift(cur, prev):
    """Rows shifted down by one: row 0 gets `prev` (the carried last row of the previous call)."""
    return np.concatenate([prev[None, :], cur[:-1]], axis=0)


# ----------------------------------------------------------------------------------------------
# WKV: the only part that is not position-wise


def wkv_recurrent(r, k, v, w, u, S):
    """The recurrence of docs/model.md §4.4, one token at a time.

    r, k, v: (T, H, N); w (decay in (0,1)), u (bonus): (H, N); S: (H, N, N) [h][key i][value j].
    Returns y (T, H, N) and the new state (S is not modified).

        y_t[j] = sum_i r_t[i] * (u[i] k_t[i] v_t[j] + S[i][j])
        S[i][j] <- w[i] S[i][j] + k_t[i] v_t[j]          (decay on the key index)
    """
    S = np.array(S, copy=True)
    y = np.empty(np.broadcast_shapes(r.shape, v.shape), dtype=np.result_type(r, S))
    for t in range(r.shape[0]):
        kv = k[t][:, :, None] * v[t][:, None, :]  # (H, N, N) = k_t^T v_t
        y[t] = np.einsum("hi,hij->hj", r[t], u[:, :, None] * kv + S)
        S = w[:, :, None] * S + kv
    return y, S


def wkv_parallel(r, k, v, w, u, S, chunk_len=16):
    """The matrix form of docs/model.md §6.1 per chunk of `chunk_len` tokens, state carried between chunks.

    Same arguments and result as `wkv_recurrent`. Only non-negative powers of w appear:
    with P[d] = w**d (element-wise, d = 0..n), for a chunk of n tokens starting in state S0

        y_t      = (r_t * P[t]) @ S0  +  sum_{s<=t} A[t][s] v_s
        A[t][s]  = sum_i r_t[i] k_s[i] P[t-1-s][i]   (s < t),   A[t][t] = sum_i r_t[i] u[i] k_t[i]
        S_n      = P[n][:, None] * S0 + sum_s (k_s * P[n-1-s])^T v_s
    """
    T = r.shape[0]
    S = np.array(S, copy=True)
    y = np.empty(np.broadcast_shapes(r.shape, v.shape), dtype=np.result_type(r, S))
    for c0 in range(0, T, chunk_len):
        R, K, Vv = r[c0 : c0 + chunk_len], k[c0 : c0 + chunk_len], v[c0 : c0 + chunk_len]
        n = R.shape[0]
        P = np.power(w[None], np.arange(n + 1, dtype=np.float64)[:, None, None])  # (n+1, H, N)
        t_idx, s_idx = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
        below = s_idx < t_idx
        D = np.where(below, t_idx - 1 - s_idx, 0)  # exponent t-1-s >= 0
        # A[h, t, s] = sum_i R[t,h,i] K[s,h,i] P[t-1-s,h,i], masked to s < t
        A = np.einsum("thi,shi,tshi->hts", R, K, P[D]) * below[None]
        A[:, np.arange(n), np.arange(n)] = np.einsum(
            "thi,hi,thi->ht", R, u, K
        )  # diagonal: the bonus
        y[c0 : c0 + n] = np.einsum("thi,hij->thj", R * P[:n], S) + np.einsum("hts,shj->thj", A, Vv)
        S = P[n][:, :, None] * S + np.einsum("shi,shj->hij", K * P[n - 1 - np.arange(n)], Vv)
    return y, S


# ----------------------------------------------------------------------------------------------
# The model


class ReferenceModel:
    """Forward pass of an RWKV-5 (5.0 / 5.1 / 5.2) state dict in NumPy.

    sd: RWKV-LM names and raw values (docs/model.md §3). All arithmetic runs in `dtype` (float64 by default).
    State: a tuple (att_x (L,C), att_kv (L,H,N,N), ffn_x (L,C)) of `dtype` arrays; one sequence.
    """

    def __init__(self, sd, gn_eps=GN_EPS_RWKV_LM, dtype=np.float64):
        self.arch = a = detect_architecture(sd)
        self.gn_eps = float(gn_eps)
        self.dtype = dtype
        f = lambda name: as_float(sd[name], dtype)  # noqa: E731
        self.emb, self.head = f("emb.weight"), f("head.weight")
        self.ln0 = (f("blocks.0.ln0.weight"), f("blocks.0.ln0.bias"))
        self.ln_out = (f("ln_out.weight"), f("ln_out.bias"))
        self.layers = []
        for i in range(a.n_layer):
            p = f"blocks.{i}."
            mix = lambda n: f(p + n).reshape(-1)  # noqa: E731   (1,1,C) -> (C,)
            _, w, u = decay_and_bonus(sd, a, i)
            L = dict(
                ln1=(f(p + "ln1.weight"), f(p + "ln1.bias")),
                ln2=(f(p + "ln2.weight"), f(p + "ln2.bias")),
                mix_k=mix("att.time_mix_k"),
                mix_v=mix("att.time_mix_v"),
                mix_r=mix("att.time_mix_r"),
                w=w.astype(dtype),
                u=u.astype(dtype),
                Wr=f(p + "att.receptance.weight"),
                Wk=f(p + "att.key.weight"),
                Wv=f(p + "att.value.weight"),
                Wo=f(p + "att.output.weight"),
                ln_x=(f(p + "att.ln_x.weight"), f(p + "att.ln_x.bias")),
                fmix_k=mix("ffn.time_mix_k"),
                fmix_r=mix("ffn.time_mix_r"),
                Fk=f(p + "ffn.key.weight"),
                Fr=f(p + "ffn.receptance.weight"),
                Fv=f(p + "ffn.value.weight"),
            )
            if a.version != "5.0":
                L.update(mix_g=mix("att.time_mix_g"), Wg=f(p + "att.gate.weight"))
            self.layers.append(L)

    def new_state(self):
        a = self.arch
        return (
            np.zeros((a.n_layer, a.n_embd), self.dtype),
            np.zeros((a.n_layer, a.n_head, a.head_size, a.head_size), self.dtype),
            np.zeros((a.n_layer, a.n_embd), self.dtype),
        )

    def forward(self, tokens, state=None, mode="recurrent", full_output=False, chunk_len=16):
        """Logits (V,) for the last token, or (T, V) with full_output, and the new state.

        mode "recurrent" runs the layers one token at a time (docs/model.md §4); "parallel" runs each layer
        over all T positions with the chunked wkv (docs/model.md §6). The state passed in is not modified.
        """
        tokens = np.asarray(tokens, dtype=np.int64).reshape(-1)
        att_x, att_kv, ffn_x = (
            np.array(s, dtype=self.dtype, copy=True)
            for s in (state if state is not None else self.new_state())
        )
        if mode == "recurrent":
            outs = [
                self._run(tokens[t : t + 1], att_x, att_kv, ffn_x, wkv_recurrent)
                for t in range(len(tokens))
            ]
            logits = np.concatenate(outs, axis=0)
        elif mode == "parallel":
            wkv = lambda r, k, v, w, u, S: wkv_parallel(r, k, v, w, u, S, chunk_len)  # noqa: E731
            logits = self._run(tokens, att_x, att_kv, ffn_x, wkv)
        else:
            raise ValueError(f"mode must be 'recurrent' or 'parallel', got {mode!r}")
        return (logits if full_output else logits[-1]), (att_x, att_kv, ffn_x)

    def _run(self, tokens, att_x, att_kv, ffn_x, wkv):
        """All layers over the positions `tokens` (T,), updating the state arrays in place."""
        a = self.arch
        T, H, N = len(tokens), a.n_head, a.head_size
        x = layer_norm(self.emb[tokens], *self.ln0)  # (T, C), ln0 at run time
        for l, L in enumerate(self.layers):
            # --- time mix: token shift over LN1 outputs, projections, wkv, GroupNorm, gate
            xa = layer_norm(x, *L["ln1"])
            prev = token_shift(xa, att_x[l])
            att_x[l] = xa[-1]
            mixed = lambda mu: xa * mu + prev * (1 - mu)  # noqa: E731
            r = (mixed(L["mix_r"]) @ L["Wr"].T).reshape(T, H, N)  # no sigmoid on r in v5
            k = (mixed(L["mix_k"]) @ L["Wk"].T).reshape(T, H, N)
            v = (mixed(L["mix_v"]) @ L["Wv"].T).reshape(T, H, N)
            y, att_kv[l] = wkv(r, k, v, L["w"], L["u"], att_kv[l])
            o = group_norm(y.reshape(T, H * N), *L["ln_x"], H, self.gn_eps)
            if "Wg" in L:  # 5.1 / 5.2: SiLU gate
                g = mixed(L["mix_g"]) @ L["Wg"].T
                o = o * (g * sigmoid(g))
            x = x + o @ L["Wo"].T
            # --- channel mix: token shift over LN2 outputs, relu^2 key, sigmoid receptance
            xb = layer_norm(x, *L["ln2"])
            prev = token_shift(xb, ffn_x[l])
            ffn_x[l] = xb[-1]
            xk = xb * L["fmix_k"] + prev * (1 - L["fmix_k"])
            xr = xb * L["fmix_r"] + prev * (1 - L["fmix_r"])
            x = x + sigmoid(xr @ L["Fr"].T) * (np.maximum(xk @ L["Fk"].T, 0) ** 2 @ L["Fv"].T)
        return layer_norm(x, *self.ln_out) @ self.head.T  # (T, V)
