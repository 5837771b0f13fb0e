/* RWKV World tokenizer: vocab parser, double-array trie, greedy longest-match encoder.
 *
 * Encoding rule (docs/tokenizer.md): at byte position p take the longest vocab token that is a
 * prefix of text[p..], emit its id, continue after it. Every single byte is a token, so each step
 * consumes at least one byte and every byte string is encodable.
 *
 * Data structure (see docs/tokenizer.md):
 *   - a double-array trie: slot t is a child of state s with label byte c iff
 *         t == nodes[s].base + c  and  nodes[t].check == s.
 *     Each node also stores the *best token on its path*: the id and byte length of the longest
 *     vocab token that is a prefix of the node's string. When the walk stops at state s, the
 *     answer is (tok, len) of s, with no bookkeeping in the loop.
 *   - the encoder reads a compact copy: one uint64 per slot, base | (check | len << 24) << 32,
 *     ids in a side array read once per token (vocabs beyond its limits use the 16-byte nodes).
 *   - first2w[b0 | b1 << 8]: the hot word of the state after the first two bytes (or after b0
 *     alone when b0 b1 is not a path, with a flag): one load for the two hottest steps.
 *   - the walk runs without an end-of-buffer test while at least max_len + 1 bytes remain (no
 *     path is longer than max_len), and with the test only in the last max_len bytes.
 *   - texts of 8 KiB or more are walked as two interleaved halves, re-joined exactly.
 */
#include "tokenizer/world_tokenizer.h"
#include "tokenizer/wt_internal.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define WT_MAX_ID        ((1u << 24) - 1) /* ids above this are refused (bounded id table) */
#define WT_MAX_TOKEN_LEN 65535u           /* node.len is a byte count of one token */
#define WT_NO_PARENT     0xFFFFFFFFu      /* check value of free slots and of the root */

typedef struct {
    uint32_t check; /* parent state, or WT_NO_PARENT for a free slot / the root */
    uint32_t base;  /* children of this state live at base + byte */
    uint32_t tok;   /* id of the longest token that is a prefix of this node's string */
    uint32_t len;   /* its length in bytes (0 only for the root) */
} wt_node;

struct wt_tokenizer {
    wt_node *nodes; /* (n_slots,) double array; n_slots >= max base + 256 */
    size_t n_slots;
    uint64_t *hot;      /* (n_slots,) compact copy of nodes for the encoder, or NULL (see below) */
    uint32_t *best_tok; /* (n_slots,) nodes[s].tok, beside `hot` */
    uint32_t
        *first2; /* (65536,) state after the first 1 or 2 bytes: state << 1 | (consumed == 2) */
    uint64_t *first2w; /* (65536,) the same for the compact layout, with the state's hot word */
    uint8_t *blob;     /* all token bytes, concatenated */
    uint64_t *tok_off; /* (n_vocab,) offset of id's bytes in blob */
    uint32_t *tok_len; /* (n_vocab,) byte length; 0 = no entry */
    uint32_t n_vocab;  /* max id + 1 */
    uint32_t n_tokens; /* number of entries */
    uint32_t max_len;  /* longest token in bytes */
};

/* ------------------------------------------------------------------------------------------ */
/* Vocab parsing                                                                               */

static void set_err(char *err, size_t errlen, const char *fmt, ...) {
    if (!err || errlen == 0) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static int hexval(int c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Append the UTF-8 encoding of code point cp (< 0x110000, not a surrogate) to dst. */
static size_t utf8_put(uint8_t *dst, uint32_t cp) {
    if (cp < 0x80) {
        dst[0] = (uint8_t)cp;
        return 1;
    }
    if (cp < 0x800) {
        dst[0] = (uint8_t)(0xC0 | (cp >> 6));
        dst[1] = (uint8_t)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        dst[0] = (uint8_t)(0xE0 | (cp >> 12));
        dst[1] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
        dst[2] = (uint8_t)(0x80 | (cp & 0x3F));
        return 3;
    }
    dst[0] = (uint8_t)(0xF0 | (cp >> 18));
    dst[1] = (uint8_t)(0x80 | ((cp >> 12) & 0x3F));
    dst[2] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
    dst[3] = (uint8_t)(0x80 | (cp & 0x3F));
    return 4;
}

/* Length of the valid UTF-8 sequence starting at s (strict: no overlongs, no surrogates,
 * <= U+10FFFF), or 0 when the bytes there are not valid UTF-8. */
static size_t utf8_valid_len(const uint8_t *s, const uint8_t *e) {
    uint8_t c = s[0];
    if (c < 0x80) return 1;
    size_t n = e - s;
    if (c >= 0xC2 && c <= 0xDF) return (n >= 2 && (s[1] & 0xC0) == 0x80) ? 2 : 0;
    if (c >= 0xE0 && c <= 0xEF) {
        if (n < 3 || (s[1] & 0xC0) != 0x80 || (s[2] & 0xC0) != 0x80) return 0;
        if (c == 0xE0 && s[1] < 0xA0) return 0;  /* overlong */
        if (c == 0xED && s[1] >= 0xA0) return 0; /* surrogate */
        return 3;
    }
    if (c >= 0xF0 && c <= 0xF4) {
        if (n < 4 || (s[1] & 0xC0) != 0x80 || (s[2] & 0xC0) != 0x80 || (s[3] & 0xC0) != 0x80)
            return 0;
        if (c == 0xF0 && s[1] < 0x90) return 0;
        if (c == 0xF4 && s[1] >= 0x90) return 0;
        return 4;
    }
    return 0;
}

/* Decode one Python str or bytes literal s..e (surrounding blanks allowed) into dst, which has
 * room for e - s bytes (no escape produces more bytes than it occupies). Returns NULL on
 * success or a static description of the problem. */
static const char *parse_literal(const uint8_t *s, const uint8_t *e, uint8_t *dst, size_t *dlen) {
    while (s < e && (*s == ' ' || *s == '\t')) s++;
    while (e > s && (e[-1] == ' ' || e[-1] == '\t')) e--;
    int is_bytes = 0;
    if (s < e && (*s == 'b' || *s == 'B')) {
        is_bytes = 1;
        s++;
    }
    if (e - s < 2 || (*s != '\'' && *s != '"'))
        return "expected a quoted Python str or bytes literal";
    uint8_t q = *s;
    if (e[-1] != q) return "literal is not closed by its opening quote";
    s++;
    e--;
    size_t o = 0;
    while (s < e) {
        uint8_t c = *s;
        if (c == q)
            return "unescaped quote inside the literal (only one literal per line is allowed)";
        if (c == '\r' || c == '\n') return "raw line break inside the literal";
        if (c != '\\') {
            if (c < 0x80) {
                dst[o++] = c;
                s++;
                continue;
            }
            if (is_bytes) return "non-ASCII character in a bytes literal";
            size_t n = utf8_valid_len(s, e);
            if (n == 0) return "invalid UTF-8 in the literal";
            memcpy(dst + o, s, n);
            o += n;
            s += n;
            continue;
        }
        if (s + 1 >= e) return "backslash at the end of the literal";
        uint8_t x = s[1];
        s += 2;
        switch (x) {
        case '\\':
            dst[o++] = '\\';
            break;
        case '\'':
            dst[o++] = '\'';
            break;
        case '"':
            dst[o++] = '"';
            break;
        case 'n':
            dst[o++] = '\n';
            break;
        case 'r':
            dst[o++] = '\r';
            break;
        case 't':
            dst[o++] = '\t';
            break;
        case 'a':
            dst[o++] = '\a';
            break;
        case 'b':
            dst[o++] = '\b';
            break;
        case 'f':
            dst[o++] = '\f';
            break;
        case 'v':
            dst[o++] = '\v';
            break;
        case 'x':
        case 'u':
        case 'U': {
            int nd = x == 'x' ? 2 : x == 'u' ? 4 : 8;
            if (x != 'x' && is_bytes) return "\\u or \\U escape in a bytes literal";
            if (e - s < nd) return "truncated \\x/\\u/\\U escape";
            uint32_t cp = 0;
            for (int i = 0; i < nd; i++) {
                int h = hexval(s[i]);
                if (h < 0) return "bad hex digit in a \\x/\\u/\\U escape";
                cp = cp << 4 | (uint32_t)h;
            }
            s += nd;
            if (is_bytes) {
                dst[o++] = (uint8_t)cp;
                break;
            }
            /* In a str literal the escape is a code point, stored UTF-8 encoded (docs/tokenizer.md,
             * "Vocab files"). */
            if (cp > 0x10FFFF) return "\\U escape beyond U+10FFFF";
            if (cp >= 0xD800 && cp <= 0xDFFF)
                return "surrogate code point (not encodable as UTF-8)";
            o += utf8_put(dst + o, cp);
            break;
        }
        default:
            if (x >= '0' && x <= '7') { /* octal \o, \oo, \ooo */
                uint32_t v = x - '0';
                for (int i = 0; i < 2 && s < e && *s >= '0' && *s <= '7'; i++)
                    v = v * 8 + (*s++ - '0');
                if (is_bytes) {
                    if (v > 255) return "octal escape above 0o377 in a bytes literal";
                    dst[o++] = (uint8_t)v;
                } else
                    o += utf8_put(dst + o, v);
                break;
            }
            return "unsupported escape sequence";
        }
    }
    *dlen = o;
    return NULL;
}

/* Parse a decimal number from s..e (digits only). Returns 0 on success. */
static int parse_uint(const uint8_t *s, const uint8_t *e, uint64_t *v) {
    if (s >= e || e - s > 12) return -1;
    uint64_t x = 0;
    for (; s < e; s++) {
        if (*s < '0' || *s > '9') return -1;
        x = x * 10 + (uint64_t)(*s - '0');
    }
    *v = x;
    return 0;
}

typedef struct {
    uint32_t id;
    uint32_t line;
    uint64_t off; /* into the parse blob */
    uint32_t len;
    const uint8_t *bytes; /* blob + off, set once the blob stops growing (for sorting) */
} entry;

/* ------------------------------------------------------------------------------------------ */
/* Double-array construction                                                                   */

typedef struct {
    wt_node *nodes;
    uint8_t *used;
    size_t cap;
    size_t first_free; /* every slot below this is used */
    size_t hi;         /* one past the highest used slot */
} da_builder;

static int da_reserve(da_builder *b, size_t need) {
    if (need <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < need) cap *= 2;
    wt_node *nn = realloc(b->nodes, cap * sizeof *nn);
    if (!nn) return -1;
    b->nodes = nn;
    uint8_t *nu = realloc(b->used, cap);
    if (!nu) return -1;
    b->used = nu;
    for (size_t i = b->cap; i < cap; i++) {
        nn[i].check = WT_NO_PARENT;
        nn[i].base = 0;
        nn[i].tok = 0;
        nn[i].len = 0;
        nu[i] = 0;
    }
    b->cap = cap;
    return 0;
}

/* First base such that every slot base + labels[i] is free (labels ascending, k >= 1). */
static int da_find_base(da_builder *b, const uint8_t *labels, int k, size_t *out) {
    size_t pos = b->first_free > labels[0] ? b->first_free : labels[0];
    for (;; pos++) {
        if (da_reserve(b, pos + 257) < 0) return -1;
        if (b->used[pos]) continue;
        size_t base = pos - labels[0];
        int ok = 1;
        for (int i = 1; i < k; i++)
            if (b->used[base + labels[i]]) {
                ok = 0;
                break;
            }
        if (ok) {
            *out = base;
            return 0;
        }
    }
}

typedef struct {
    uint32_t state, lo, hi, depth;
} build_item;

static int cmp_entries(const void *pa, const void *pb) {
    const entry *a = pa, *b = pb;
    size_t n = a->len < b->len ? a->len : b->len;
    int c = memcmp(a->bytes, b->bytes, n);
    if (c) return c;
    if (a->len != b->len) return a->len < b->len ? -1 : 1;
    return a->line < b->line ? -1
                             : a->line > b->line; /* duplicates: file order, the last one wins */
}

/* Build the double array over entries sorted by bytes. Returns 0 or -1 (out of memory). */
static int da_build(wt_tokenizer *tok, const entry *ents, uint32_t n) {
    int rc = -1;
    da_builder b = {0};
    build_item *queue = NULL;
    size_t qcap = 1024, qhead = 0, qtail = 0;
    queue = malloc(qcap * sizeof *queue);
    if (!queue || da_reserve(&b, 1 << 16) < 0) goto done;
    b.used[0] = 1;
    b.first_free = 1;
    b.hi = 1;
    queue[qtail++] = (build_item){0, 0, n, 0};
    while (qhead < qtail) {
        build_item it = queue[qhead++];
        uint32_t lo = it.lo, d = it.depth;
        wt_node *nd = &b.nodes[it.state];
        /* Entries equal to the node's string sort first; the last of them (file order) wins. */
        while (lo < it.hi && ents[lo].len == d) {
            nd->tok = ents[lo].id;
            nd->len = d;
            lo++;
        }
        if (lo == it.hi) {
            nd->base = 0;
            continue;
        } /* leaf: no slot t has check == state */
        uint8_t labels[256];
        uint32_t starts[257];
        int k = 0;
        for (uint32_t i = lo; i < it.hi; i++) {
            uint8_t c = ents[i].bytes[d];
            if (k == 0 || labels[k - 1] != c) {
                labels[k] = c;
                starts[k] = i;
                k++;
            }
        }
        starts[k] = it.hi;
        size_t base;
        if (da_find_base(&b, labels, k, &base) < 0) goto done;
        nd = &b.nodes[it.state]; /* da_find_base may have moved the array */
        nd->base = (uint32_t)base;
        if (qtail + (size_t)k > qcap) {
            size_t live = qtail - qhead;
            if (qhead > 0) {
                memmove(queue, queue + qhead, live * sizeof *queue);
                qtail = live;
                qhead = 0;
            }
            while (qtail + (size_t)k > qcap) qcap *= 2;
            build_item *nq = realloc(queue, qcap * sizeof *nq);
            if (!nq) goto done;
            queue = nq;
        }
        for (int i = 0; i < k; i++) {
            size_t t = base + labels[i];
            b.used[t] = 1;
            b.nodes[t].check = it.state;
            b.nodes[t].tok =
                nd->tok; /* inherit the best token so far; overridden if t is a token */
            b.nodes[t].len = nd->len;
            if (t + 1 > b.hi) b.hi = t + 1;
            queue[qtail++] = (build_item){(uint32_t)t, starts[i], starts[i + 1], d + 1};
        }
        while (b.first_free < b.cap && b.used[b.first_free]) b.first_free++;
    }
    /* Shrink to the used range plus the 256 slots any base may address. */
    size_t need = b.hi + 256;
    for (size_t s = 0; s < b.hi; s++)
        if (b.used[s] && (size_t)b.nodes[s].base + 256 > need) need = (size_t)b.nodes[s].base + 256;
    if (da_reserve(&b, need) < 0) goto done;
    tok->nodes = b.nodes;
    tok->n_slots = need;
    b.nodes = NULL;
    rc = 0;
done:
    free(b.nodes);
    free(b.used);
    free(queue);
    return rc;
}

/* ------------------------------------------------------------------------------------------ */

wt_tokenizer *wt_load(const char *data, size_t len, char *err, size_t errlen) {
    wt_tokenizer *tok = NULL;
    entry *ents = NULL;
    uint8_t *blob = NULL;
    size_t n_ents = 0, cap_ents = 0, blob_len = 0, blob_cap = 0;
    uint32_t max_id = 0, max_len = 0;
    const uint8_t *p = (const uint8_t *)data, *end = p + len;
    uint32_t line = 0;

    if (!data && len) {
        set_err(err, errlen, "vocab: no data");
        goto fail;
    }
    if (len >= 3 && p[0] == 0xEF && p[1] == 0xBB && p[2] == 0xBF) p += 3; /* UTF-8 BOM */
    while (p < end) {
        const uint8_t *nl = memchr(p, '\n', end - p);
        const uint8_t *le = nl ? nl : end;
        const uint8_t *next = nl ? nl + 1 : end;
        line++;
        if (le > p && le[-1] == '\r') le--; /* CRLF */
        const uint8_t *s = p;
        p = next;
        int blank = 1;
        for (const uint8_t *c = s; c < le; c++)
            if (*c != ' ' && *c != '\t') {
                blank = 0;
                break;
            }
        if (blank) continue;
        const uint8_t *sp1 = memchr(s, ' ', le - s);
        const uint8_t *sp2 = le;
        while (sp2 > s && sp2[-1] != ' ') sp2--;
        if (!sp1 || sp2 - 1 <= sp1) {
            set_err(err, errlen, "vocab line %u: expected '<id> <literal> <byte length>'", line);
            goto fail;
        }
        sp2--; /* the last space */
        uint64_t id, want;
        if (parse_uint(s, sp1, &id) < 0) {
            set_err(err, errlen, "vocab line %u: the id is not a decimal number", line);
            goto fail;
        }
        if (id > WT_MAX_ID) {
            set_err(err, errlen, "vocab line %u: id %llu is out of range (max %u)", line,
                    (unsigned long long)id, WT_MAX_ID);
            goto fail;
        }
        if (parse_uint(sp2 + 1, le, &want) < 0) {
            set_err(err, errlen,
                    "vocab line %u: the byte length (last column) is not a decimal number", line);
            goto fail;
        }
        size_t litlen = sp2 - (sp1 + 1);
        if (!blob || blob_len + litlen > blob_cap) { /* !blob: never form NULL + 0 (UB) */
            size_t nc = blob_cap ? blob_cap : 1 << 20;
            while (nc < blob_len + litlen) nc *= 2;
            uint8_t *nb = realloc(blob, nc);
            if (!nb) {
                set_err(err, errlen, "vocab: out of memory");
                goto fail;
            }
            blob = nb;
            blob_cap = nc;
        }
        size_t dlen = 0;
        const char *why = parse_literal(sp1 + 1, sp2, blob + blob_len, &dlen);
        if (why) {
            set_err(err, errlen, "vocab line %u: %s", line, why);
            goto fail;
        }
        if (dlen != want) {
            set_err(err, errlen,
                    "vocab line %u: token is %zu bytes but the length column says %llu", line, dlen,
                    (unsigned long long)want);
            goto fail;
        }
        if (dlen == 0) {
            set_err(err, errlen, "vocab line %u: empty token", line);
            goto fail;
        }
        if (dlen > WT_MAX_TOKEN_LEN) {
            set_err(err, errlen, "vocab line %u: token longer than %u bytes", line,
                    WT_MAX_TOKEN_LEN);
            goto fail;
        }
        if (n_ents == cap_ents) {
            size_t nc = cap_ents ? cap_ents * 2 : 65536;
            entry *ne = realloc(ents, nc * sizeof *ne);
            if (!ne) {
                set_err(err, errlen, "vocab: out of memory");
                goto fail;
            }
            ents = ne;
            cap_ents = nc;
        }
        ents[n_ents++] = (entry){(uint32_t)id, line, blob_len, (uint32_t)dlen, NULL};
        blob_len += dlen;
        if (id > max_id) max_id = (uint32_t)id;
        if (dlen > max_len) max_len = (uint32_t)dlen;
    }
    if (n_ents == 0) {
        set_err(err, errlen, "vocab: no tokens (empty file)");
        goto fail;
    }

    tok = calloc(1, sizeof *tok);
    if (!tok) {
        set_err(err, errlen, "vocab: out of memory");
        goto fail;
    }
    tok->n_vocab = max_id + 1;
    tok->n_tokens = (uint32_t)n_ents;
    tok->max_len = max_len;
    tok->tok_off = calloc(tok->n_vocab, sizeof *tok->tok_off);
    tok->tok_len = calloc(tok->n_vocab, sizeof *tok->tok_len);
    tok->first2 = malloc(65536 * sizeof *tok->first2);
    if (!tok->tok_off || !tok->tok_len || !tok->first2) {
        set_err(err, errlen, "vocab: out of memory");
        goto fail;
    }
    for (size_t i = 0; i < n_ents; i++) {
        uint32_t id = ents[i].id;
        if (tok->tok_len[id]) {
            uint32_t prev = 0;
            for (size_t j = 0; j < i; j++)
                if (ents[j].id == id) {
                    prev = ents[j].line;
                    break;
                }
            set_err(err, errlen, "vocab line %u: id %u is already defined on line %u", ents[i].line,
                    id, prev);
            goto fail;
        }
        tok->tok_off[id] = ents[i].off;
        tok->tok_len[id] = ents[i].len;
    }
    for (size_t i = 0; i < n_ents; i++) ents[i].bytes = blob + ents[i].off;
    qsort(ents, n_ents, sizeof *ents, cmp_entries);
    if (da_build(tok, ents, (uint32_t)n_ents) < 0) {
        set_err(err, errlen, "vocab: out of memory");
        goto fail;
    }

    /* Every byte must be a token (so every input is encodable); then fill first2. */
    const wt_node *nd = tok->nodes;
    uint32_t rb = nd[0].base;
    for (uint32_t c = 0; c < 256; c++) {
        uint32_t s = rb + c;
        if (nd[s].check != 0 || nd[s].len != 1) {
            set_err(err, errlen,
                    "vocab: no token for the single byte 0x%02X; every byte value must be a token",
                    c);
            goto fail;
        }
    }
    for (uint32_t c0 = 0; c0 < 256; c0++) {
        uint32_t s1 = rb + c0;
        for (uint32_t c1 = 0; c1 < 256; c1++) {
            uint32_t t = nd[s1].base + c1;
            tok->first2[c0 | c1 << 8] = nd[t].check == s1 ? (t << 1 | 1u) : (s1 << 1);
        }
    }
    /* The compact layout halves the bytes the walk touches (8 instead of 16 per slot), so more
     * of the hot trie stays in L1/L2. It needs slots < 2^24 - 1 (check field; 0xFFFFFF marks a
     * free slot) and tokens of <= 255 bytes (len field); otherwise the wide nodes are used. */
    if (tok->n_slots < (1u << 23) && max_len <= 255) {
        tok->hot = malloc(tok->n_slots * sizeof *tok->hot);
        tok->best_tok = malloc(tok->n_slots * sizeof *tok->best_tok);
        tok->first2w = malloc(65536 * sizeof *tok->first2w);
        if (!tok->hot || !tok->best_tok || !tok->first2w) {
            set_err(err, errlen, "vocab: out of memory");
            goto fail;
        }
        for (size_t s = 0; s < tok->n_slots; s++) {
            uint32_t check = nd[s].check == WT_NO_PARENT ? 0xFFFFFFu : nd[s].check;
            tok->hot[s] = (uint64_t)nd[s].base | (uint64_t)(check | nd[s].len << 24) << 32;
            tok->best_tok[s] = nd[s].tok;
        }
        for (uint32_t i = 0; i < 65536; i++) {
            uint32_t st = tok->first2[i] >> 1, two = tok->first2[i] & 1;
            tok->first2w[i] = (uint64_t)nd[st].base | (uint64_t)(st | two << 23 | nd[st].len << 24)
                                                          << 32;
        }
    }
    tok->blob = blob;
    blob = NULL;
    free(ents);
    return tok;
fail:
    free(ents);
    free(blob);
    wt_free(tok);
    return NULL;
}

void wt_free(wt_tokenizer *tok) {
    if (!tok) return;
    free(tok->nodes);
    free(tok->hot);
    free(tok->best_tok);
    free(tok->first2);
    free(tok->first2w);
    free(tok->blob);
    free(tok->tok_off);
    free(tok->tok_len);
    free(tok);
}

uint32_t wt_n_vocab(const wt_tokenizer *tok) { return tok->n_vocab; }
uint32_t wt_n_tokens(const wt_tokenizer *tok) { return tok->n_tokens; }
uint32_t wt_max_token_len(const wt_tokenizer *tok) { return tok->max_len; }

const uint8_t *wt_token_bytes(const wt_tokenizer *tok, uint32_t id, size_t *len) {
    if (id >= tok->n_vocab || tok->tok_len[id] == 0) {
        *len = 0;
        return NULL;
    }
    *len = tok->tok_len[id];
    return tok->blob + tok->tok_off[id];
}

int wt_token_to_id(const wt_tokenizer *tok, const uint8_t *bytes, size_t n, uint32_t *id) {
    if (n == 0 || n > tok->max_len) return 0;
    const wt_node *nd = tok->nodes;
    uint32_t s = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t t = nd[s].base + bytes[i];
        if (nd[t].check != s) return 0;
        s = t;
    }
    if (nd[s].len != n) return 0;
    *id = nd[s].tok;
    return 1;
}

/* ------------------------------------------------------------------------------------------ */
/* Encoder                                                                                     */

/* Encode the tokens that start in [p0, stop): greedy walk from each token start, reading the
 * text up to n (a token that starts before `stop` may end after it). *p_end gets the end of
 * the last token. OUT_T is uint32_t or uint16_t.
 *
 *   while p < stop: s = longest path from p in the trie; emit best(s); p += len(best(s))
 *
 * While at least max_len + 1 bytes remain after p the walk needs no end test: no trie path is
 * longer than max_len, so the byte read that ends the walk is at most p + max_len.
 *
 * The node layout is abstracted by W_T (what one load returns), W_LOAD(s), W_BASE(w),
 * W_CHECK(w), W_LEN(w) and W_TOK(s, w): one body serves the compact and the wide layout. */
#define WT_SPAN_BODY(OUT_T, W_T, W_LOAD, W_BASE, W_CHECK, W_LEN, W_TOK, W_START)                   \
    const uint8_t *p = text + p0, *end = text + n, *lim = text + stop;                             \
    OUT_T *o = out;                                                                                \
    if (n > (size_t)tok->max_len + 1) {                                                            \
        const uint8_t *fast_end = end - tok->max_len - 1;                                          \
        if (fast_end > lim) fast_end = lim;                                                        \
        while (p < fast_end) {                                                                     \
            uint32_t s;                                                                            \
            const uint8_t *q;                                                                      \
            W_T w;                                                                                 \
            W_START(p, s, q, w);                                                                   \
            for (;;) {                                                                             \
                uint32_t t = W_BASE(w) + *q;                                                       \
                W_T w2 = W_LOAD(t);                                                                \
                if (W_CHECK(w2) != s) break;                                                       \
                s = t;                                                                             \
                w = w2;                                                                            \
                q++;                                                                               \
            }                                                                                      \
            *o++ = (OUT_T)W_TOK(s, w);                                                             \
            p += W_LEN(w);                                                                         \
        }                                                                                          \
    }                                                                                              \
    while (p < lim) { /* near the end of the text: the same walk, bounded by end */                \
        uint32_t s = W_BASE(W_LOAD(0)) + p[0];                                                     \
        const uint8_t *q = p + 1;                                                                  \
        W_T w = W_LOAD(s);                                                                         \
        while (q < end) {                                                                          \
            uint32_t t = W_BASE(w) + *q;                                                           \
            W_T w2 = W_LOAD(t);                                                                    \
            if (W_CHECK(w2) != s) break;                                                           \
            s = t;                                                                                 \
            w = w2;                                                                                \
            q++;                                                                                   \
        }                                                                                          \
        *o++ = (OUT_T)W_TOK(s, w);                                                                 \
        p += W_LEN(w);                                                                             \
    }                                                                                              \
    *p_end = (size_t)(p - text);                                                                   \
    return (size_t)(o - out);

/* Compact layout: one uint64 per slot, base | (check | len << 24) << 32; ids in best_tok[]. */
#define C_LOAD(s)   (hot[(s)])
#define C_BASE(w)   ((uint32_t)(w))
#define C_CHECK(w)  ((uint32_t)((w) >> 32) & 0xFFFFFFu)
#define C_LEN(w)    ((uint32_t)((w) >> 56))
#define C_TOK(s, w) (best_tok[(s)])
/* first2w[b0 | b1 << 8] = the state's hot word with its own index (and the consumed-2 flag) in
 * place of the check field: base | (s | two << 23 | len << 24) << 32, saving one load a token. */
#define C_START(p, s, q, w)                                                                        \
    do {                                                                                           \
        uint64_t e_ = f2w[(p)[0] | (uint32_t)(p)[1] << 8];                                         \
        (s) = (uint32_t)(e_ >> 32) & 0x7FFFFFu;                                                    \
        (q) = (p) + 1 + ((e_ >> 55) & 1);                                                          \
        (w) = e_;                                                                                  \
    } while (0)
/* Wide layout: the 16-byte wt_node, for vocabs beyond the compact limits. */
#define N_LOAD(s)   (&nd[(s)])
#define N_BASE(w)   ((w)->base)
#define N_CHECK(w)  ((w)->check)
#define N_LEN(w)    ((w)->len)
#define N_TOK(s, w) ((w)->tok)
#define N_START(p, s, q, w)                                                                        \
    do {                                                                                           \
        uint32_t e_ = f2[(p)[0] | (uint32_t)(p)[1] << 8];                                          \
        (s) = e_ >> 1;                                                                             \
        (q) = (p) + 1 + (e_ & 1);                                                                  \
        (w) = &nd[(s)];                                                                            \
    } while (0)

#define WT_ENCODE_SPAN(NAME, OUT_T)                                                                \
    static inline size_t NAME##_compact(const wt_tokenizer *tok, const uint8_t *text, size_t n,    \
                                        size_t p0, size_t stop, OUT_T *out, size_t *p_end) {       \
        const uint64_t *hot = tok->hot;                                                            \
        const uint32_t *best_tok = tok->best_tok;                                                  \
        const uint64_t *f2w = tok->first2w;                                                        \
        WT_SPAN_BODY(OUT_T, uint64_t, C_LOAD, C_BASE, C_CHECK, C_LEN, C_TOK, C_START)              \
    }                                                                                              \
    static inline size_t NAME##_wide(const wt_tokenizer *tok, const uint8_t *text, size_t n,       \
                                     size_t p0, size_t stop, OUT_T *out, size_t *p_end) {          \
        const wt_node *nd = tok->nodes;                                                            \
        const uint32_t *f2 = tok->first2;                                                          \
        WT_SPAN_BODY(OUT_T, const wt_node *, N_LOAD, N_BASE, N_CHECK, N_LEN, N_TOK, N_START)       \
    }                                                                                              \
    static size_t NAME(const wt_tokenizer *tok, const uint8_t *text, size_t n, size_t p0,          \
                       size_t stop, OUT_T *out, size_t *p_end) {                                   \
        if (tok->hot) return NAME##_compact(tok, text, n, p0, stop, out, p_end);                   \
        return NAME##_wide(tok, text, n, p0, stop, out, p_end);                                    \
    }

WT_ENCODE_SPAN(encode_span_u32, uint32_t)
WT_ENCODE_SPAN(encode_span_u16, uint16_t)

/* ---- two streams on one thread ---------------------------------------------------------------
 * Each byte of the walk is one load whose address depends on the previous load, so a single
 * walk is bound by load latency (about 27 cycles per 6-byte token even on perfectly predictable
 * text). Cutting the span in two halves A = [p0, h) and B = [h, stop) and advancing both walks
 * in the same loop gives the core two independent chains to overlap.
 *
 * B started at h without knowing where the true token boundaries are; the halves are re-joined
 * like the pieces of wt_encode_parallel: continue the true encoding (A's) token by token from
 * where it stands until it lands on a token start of B; from there B's tokens are the true ones
 * (greedy matching from a given position is deterministic). The few re-encoded tokens go to a
 * small stack buffer; if they do not meet B within TWO_TMP tokens (a pathological vocab), B is
 * dropped and the true encoding simply continues to the end. Never allocates, never fails. */
#define TWO_MIN_BYTES 8192
#define TWO_TMP       512

/* The two-stream loop: walks A (from pa, while pa < la) and B (from pb, while pb < lb) advance
 * one byte each per iteration; stops as soon as one of them reaches its limit, leaving both at a
 * token start (a walk in progress is simply abandoned and redone by the caller). Uses hot,
 * best_tok, f2w and the variables named here from the enclosing function. */
#define WT_DUAL_LOOP(OUT_T)                                                                        \
    do {                                                                                           \
        uint32_t sa, sb;                                                                           \
        const uint8_t *qa, *qb;                                                                    \
        uint64_t wa, wb;                                                                           \
        C_START(pa, sa, qa, wa);                                                                   \
        C_START(pb, sb, qb, wb);                                                                   \
        for (;;) {                                                                                 \
            uint32_t ta = C_BASE(wa) + *qa, tb = C_BASE(wb) + *qb;                                 \
            uint64_t xa = hot[ta], xb = hot[tb];                                                   \
            if (C_CHECK(xa) == sa) {                                                               \
                sa = ta;                                                                           \
                wa = xa;                                                                           \
                qa++;                                                                              \
            } else {                                                                               \
                *oa++ = (OUT_T)best_tok[sa];                                                       \
                pa += C_LEN(wa);                                                                   \
                if (pa >= la) break;                                                               \
                C_START(pa, sa, qa, wa);                                                           \
            }                                                                                      \
            if (C_CHECK(xb) == sb) {                                                               \
                sb = tb;                                                                           \
                wb = xb;                                                                           \
                qb++;                                                                              \
            } else {                                                                               \
                *ob++ = (OUT_T)best_tok[sb];                                                       \
                pb += C_LEN(wb);                                                                   \
                if (pb >= lb) break;                                                               \
                C_START(pb, sb, qb, wb);                                                           \
            }                                                                                      \
        }                                                                                          \
    } while (0)

#define WT_TWO_STREAMS(NAME, OUT_T, SPAN)                                                          \
    static size_t NAME(const wt_tokenizer *tok, const uint8_t *text, size_t n, size_t p0,          \
                       size_t stop, OUT_T *out, size_t *p_end) {                                   \
        const uint64_t *hot = tok->hot;                                                            \
        const uint32_t *best_tok = tok->best_tok;                                                  \
        const uint64_t *f2w = tok->first2w;                                                        \
        size_t h = p0 + (stop - p0) / 2;                                                           \
        const uint8_t *end = text + n;                                                             \
        const uint8_t *safe = end - tok->max_len - 1; /* unchecked walks start before this */      \
        const uint8_t *pa = text + p0, *pb = text + h;                                             \
        const uint8_t *la = text + h < safe ? text + h : safe;                                     \
        const uint8_t *lb = text + stop < safe ? text + stop : safe;                               \
        OUT_T *oa = out, *ob = out + (h - p0);                                                     \
        WT_DUAL_LOOP(OUT_T);                                                                       \
        /* Finish each half alone from its current token start (a walk in progress is redone). */  \
        size_t ea, eb;                                                                             \
        size_t ka = (size_t)(oa - out) + SPAN(tok, text, n, (size_t)(pa - text), h, oa, &ea);      \
        OUT_T *bout = out + (h - p0);                                                              \
        size_t kb = (size_t)(ob - bout) + SPAN(tok, text, n, (size_t)(pb - text), stop, ob, &eb);  \
        /* Join: r = where the true encoding stands; b walks B's token starts. */                  \
        OUT_T tmp[TWO_TMP];                                                                        \
        size_t f = 0, r = ea, b = h, i = 0;                                                        \
        if (r >= eb) {                                                                             \
            *p_end = ea;                                                                           \
            return ka;                                                                             \
        } /* A already covered all of B */                                                         \
        for (;;) {                                                                                 \
            while (i < kb && b < r) b += tok->tok_len[bout[i++]];                                  \
            if (b == r) {                                                                          \
                memmove(out + ka + f, bout + i, (kb - i) * sizeof *out);                           \
                memcpy(out + ka, tmp, f * sizeof *out);                                            \
                *p_end = eb;                                                                       \
                return ka + f + (kb - i);                                                          \
            }                                                                                      \
            if (f == TWO_TMP ||                                                                    \
                b < r) { /* no meeting point: drop B, continue the true encoding */                \
                memcpy(out + ka, tmp, f * sizeof *out);                                            \
                return ka + f + SPAN(tok, text, n, r, stop, out + ka + f, p_end);                  \
            }                                                                                      \
            size_t e1;                                                                             \
            SPAN(tok, text, n, r, r + 1, tmp + f, &e1); /* exactly one token */                    \
            f++;                                                                                   \
            r = e1;                                                                                \
        }                                                                                          \
    }

WT_TWO_STREAMS(encode_two_u32, uint32_t, encode_span_u32)
WT_TWO_STREAMS(encode_two_u16, uint16_t, encode_span_u16)

/* Two streams when the layout is compact and each half is long enough (and ends before the
 * last max_len bytes, where walks need the end test); else one. */
static int use_two(const wt_tokenizer *tok, size_t n, size_t p0, size_t stop) {
    size_t h = p0 + (stop - p0) / 2;
    return tok->hot && stop - p0 >= TWO_MIN_BYTES && h + (size_t)tok->max_len + 1 + 64 < n;
}

size_t wt_encode_span(const wt_tokenizer *tok, const uint8_t *text, size_t n, size_t p0,
                      size_t stop, uint32_t *out, size_t *p_end) {
    if (p0 < stop && use_two(tok, n, p0, stop))
        return encode_two_u32(tok, text, n, p0, stop, out, p_end);
    return encode_span_u32(tok, text, n, p0, stop, out, p_end);
}

size_t wt_encode(const wt_tokenizer *tok, const uint8_t *text, size_t n, uint32_t *out) {
    size_t e;
    return wt_encode_span(tok, text, n, 0, n, out, &e);
}

size_t wt_encode_u16(const wt_tokenizer *tok, const uint8_t *text, size_t n, uint16_t *out) {
    size_t e;
    if (n > 0 && use_two(tok, n, 0, n)) return encode_two_u16(tok, text, n, 0, n, out, &e);
    return encode_span_u16(tok, text, n, 0, n, out, &e);
}

/* Two independent texts on one thread (wt_encode_batch): the same two-stream loop, and since the
 * texts are independent no join is needed. What is left of either text afterwards goes through
 * wt_encode_span (which may split it in two streams again). */
void wt_encode_pair(const wt_tokenizer *tok, const uint8_t *ta, size_t na, uint32_t *outa,
                    size_t *ka, const uint8_t *tb, size_t nb, uint32_t *outb, size_t *kb) {
    size_t m = (size_t)tok->max_len + 1, e;
    if (!tok->hot || na <= m || nb <= m) {
        *ka = wt_encode(tok, ta, na, outa);
        *kb = wt_encode(tok, tb, nb, outb);
        return;
    }
    const uint64_t *hot = tok->hot;
    const uint32_t *best_tok = tok->best_tok;
    const uint64_t *f2w = tok->first2w;
    const uint8_t *pa = ta, *pb = tb, *la = ta + na - m, *lb = tb + nb - m;
    uint32_t *oa = outa, *ob = outb;
    WT_DUAL_LOOP(uint32_t);
    *ka = (size_t)(oa - outa) + wt_encode_span(tok, ta, na, (size_t)(pa - ta), na, oa, &e);
    *kb = (size_t)(ob - outb) + wt_encode_span(tok, tb, nb, (size_t)(pb - tb), nb, ob, &e);
}
