/* Extract one top-level string member from a JSON object held in one line.
 *
 * The whole line is validated as one JSON value of type object (RFC 8259 grammar, plus Python's
 * NaN/Infinity/-Infinity which json.loads accepts), so a line Python's json.loads rejects is
 * rejected here too. Only the extracted strings are decoded and UTF-8-checked; other members are
 * checked for syntax only.
 */
#include <stdio.h>
#include <string.h>

#include "dataprep/dataprep.h"

#define MAX_DEPTH 512

typedef struct {
    const uint8_t *p, *end;
    int repair;
    uint64_t n_repaired;
    int content_err; /* first DP_INVALID_UTF8 / DP_LONE_SURROGATE met (repair off); parsing goes on
                      * so that a syntax error later in the line still wins, as in Python */
} cursor;

static inline void skip_ws(cursor *c) {
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\n' || *c->p == '\r'))
        c->p++;
}

static int hex4(const uint8_t *p, uint32_t *v) {
    uint32_t x = 0;
    for (int i = 0; i < 4; i++) {
        uint8_t h = p[i];
        x <<= 4;
        if (h >= '0' && h <= '9')
            x |= (uint32_t)(h - '0');
        else if ((h | 0x20) >= 'a' && (h | 0x20) <= 'f')
            x |= (uint32_t)((h | 0x20) - 'a' + 10);
        else
            return -1;
    }
    *v = x;
    return 0;
}

static inline size_t put_utf8(uint8_t *o, uint32_t cp) {
    if (cp < 0x80) {
        o[0] = (uint8_t)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (uint8_t)(0xC0 | cp >> 6);
        o[1] = (uint8_t)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (uint8_t)(0xE0 | cp >> 12);
        o[1] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (uint8_t)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (uint8_t)(0xF0 | cp >> 18);
    o[1] = (uint8_t)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
    o[3] = (uint8_t)(0x80 | (cp & 0x3F));
    return 4;
}

/* Bytes of w (8 input bytes, little-endian) that end a plain run inside a JSON string: '"',
 * '\\' or a control byte < 0x20. The lowest flagged byte is exact (borrows only create false
 * flags above a true one), which is all the caller uses. */
static inline uint64_t special8(uint64_t w) {
    const uint64_t ones = 0x0101010101010101ull, high = 0x8080808080808080ull;
    uint64_t q = w ^ (ones * '"'), b = w ^ (ones * '\\');
    return (((q - ones) & ~q) | ((b - ones) & ~b) | ((w - ones * 0x20) & ~w)) & high;
}

/* Parse the string at c->p (which points at the opening quote). out == NULL: syntax check only.
 * Otherwise decode into out; if more than cap bytes would be written, out[0..cap) holds the first
 * cap bytes, *len = cap + 1 and the rest is only checked (keys and lang values use a small cap;
 * the text field's cap is big enough).
 * Raw bytes >= 0x80 are copied as they are (the caller validates UTF-8 afterwards, in the same
 * pass that counts scripts). text != 0: a lone surrogate escape is recorded in c->content_err
 * (repair off) or counted in c->n_repaired; it is written as U+FFFD either way. */
static int parse_string(cursor *c, uint8_t *out, size_t cap, size_t *len, int text) {
    const uint8_t *p = c->p + 1, *end = c->end;
    size_t o = 0;
    int overflow = 0;
    uint8_t tmp[8];
    for (;;) {
        /* plain run: everything but quote, backslash and control bytes; 8 bytes at a time */
        const uint8_t *run = p;
        while ((size_t)(end - p) >= 8) {
            uint64_t w;
            memcpy(&w, p, 8);
            uint64_t m = special8(w);
            if (m) {
                p += __builtin_ctzll(m) >> 3;
                goto run_end;
            }
            p += 8;
        }
        while (p < end && *p != '"' && *p != '\\' && *p >= 0x20) p++;
    run_end:
        if (out && p > run && !overflow) {
            size_t k = (size_t)(p - run), c = k <= cap - o ? k : cap - o;
            memcpy(out + o, run,
                   c); /* fill up to cap: a caller that cuts a long value reads out[0..cap) */
            o += c;
            overflow = c < k;
        }
        if (p >= end) return DP_MALFORMED_JSON; /* unterminated */
        uint8_t ch = *p;
        if (ch == '"') {
            p++;
            break;
        }
        if (ch < 0x20) return DP_MALFORMED_JSON; /* raw control character */
        size_t w = 0;                            /* bytes to emit from tmp */
        {
            if (p + 1 >= end) return DP_MALFORMED_JSON;
            uint8_t e = p[1];
            p += 2;
            switch (e) {
            case '"':
                tmp[0] = '"';
                w = 1;
                break;
            case '\\':
                tmp[0] = '\\';
                w = 1;
                break;
            case '/':
                tmp[0] = '/';
                w = 1;
                break;
            case 'b':
                tmp[0] = '\b';
                w = 1;
                break;
            case 'f':
                tmp[0] = '\f';
                w = 1;
                break;
            case 'n':
                tmp[0] = '\n';
                w = 1;
                break;
            case 'r':
                tmp[0] = '\r';
                w = 1;
                break;
            case 't':
                tmp[0] = '\t';
                w = 1;
                break;
            case 'u': {
                uint32_t cp, lo;
                if (end - p < 4 || hex4(p, &cp)) return DP_MALFORMED_JSON;
                p += 4;
                if (cp >= 0xD800 && cp <= 0xDBFF && end - p >= 6 && p[0] == '\\' && p[1] == 'u' &&
                    hex4(p + 2, &lo) == 0 && lo >= 0xDC00 && lo <= 0xDFFF) {
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00); /* surrogate pair */
                    p += 6;
                } else if (cp >= 0xD800 && cp <= 0xDFFF) {
                    if (text && !c->repair) {
                        if (!c->content_err) c->content_err = DP_LONE_SURROGATE;
                    } else if (text)
                        c->n_repaired++;
                    cp = 0xFFFD;
                }
                w = put_utf8(tmp, cp);
                break;
            }
            default:
                return DP_MALFORMED_JSON;
            }
        }
        if (out && !overflow) {
            size_t c = w <= cap - o ? w : cap - o;
            memcpy(out + o, tmp, c);
            o += c;
            overflow = c < w;
        }
    }
    c->p = p;
    if (len) *len = overflow ? cap + 1 : o;
    return DP_OK;
}

static int skip_number(cursor *c) {
    const uint8_t *p = c->p, *end = c->end;
    if (p < end && *p == '-') p++;
    if (end - p >= 8 && memcmp(p, "Infinity", 8) == 0) {
        c->p = p + 8;
        return DP_OK;
    }
    if (p >= end) return DP_MALFORMED_JSON;
    if (*p == '0')
        p++;
    else if (*p >= '1' && *p <= '9')
        while (p < end && *p >= '0' && *p <= '9') p++;
    else
        return DP_MALFORMED_JSON;
    if (p < end && *p == '.') {
        p++;
        if (p >= end || *p < '0' || *p > '9') return DP_MALFORMED_JSON;
        while (p < end && *p >= '0' && *p <= '9') p++;
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        p++;
        if (p < end && (*p == '+' || *p == '-')) p++;
        if (p >= end || *p < '0' || *p > '9') return DP_MALFORMED_JSON;
        while (p < end && *p >= '0' && *p <= '9') p++;
    }
    c->p = p;
    return DP_OK;
}

static int skip_literal(cursor *c, const char *lit) {
    size_t k = strlen(lit);
    if ((size_t)(c->end - c->p) < k || memcmp(c->p, lit, k) != 0) return DP_MALFORMED_JSON;
    c->p += k;
    return DP_OK;
}

static int skip_value(cursor *c, int depth);

/* Members or elements of a container whose opening bracket c->p points at. */
static int skip_container(cursor *c, int depth) {
    uint8_t close = *c->p == '{' ? '}' : ']';
    int is_obj = close == '}';
    if (depth >= MAX_DEPTH) return DP_MALFORMED_JSON;
    c->p++;
    skip_ws(c);
    if (c->p < c->end && *c->p == close) {
        c->p++;
        return DP_OK;
    }
    for (;;) {
        int st;
        if (is_obj) {
            if (c->p >= c->end || *c->p != '"') return DP_MALFORMED_JSON;
            if ((st = parse_string(c, NULL, 0, NULL, 0))) return st;
            skip_ws(c);
            if (c->p >= c->end || *c->p != ':') return DP_MALFORMED_JSON;
            c->p++;
            skip_ws(c);
        }
        if ((st = skip_value(c, depth + 1))) return st;
        skip_ws(c);
        if (c->p >= c->end) return DP_MALFORMED_JSON;
        if (*c->p == ',') {
            c->p++;
            skip_ws(c);
            continue;
        }
        if (*c->p == close) {
            c->p++;
            return DP_OK;
        }
        return DP_MALFORMED_JSON;
    }
}

static int skip_value(cursor *c, int depth) {
    if (c->p >= c->end) return DP_MALFORMED_JSON;
    switch (*c->p) {
    case '"':
        return parse_string(c, NULL, 0, NULL, 0);
    case '{':
    case '[':
        return skip_container(c, depth);
    case 't':
        return skip_literal(c, "true");
    case 'f':
        return skip_literal(c, "false");
    case 'n':
        return skip_literal(c, "null");
    case 'N':
        return skip_literal(c, "NaN");
    case 'I':
        return skip_literal(c, "Infinity");
    default:
        return skip_number(c);
    }
}

int dp_json_extract(const uint8_t *line, size_t n, const char *field, const char *lang_field,
                    int repair, uint8_t *out, size_t *out_len, char lang[64], uint64_t *n_repaired,
                    int *script) {
    cursor c = {line, line + n, repair, 0, 0};
    size_t flen = strlen(field), llen = lang_field ? strlen(lang_field) : 0;
    uint8_t key[256];
    int found = 0, not_string = 0, st, text_err = 0;
    size_t text_len = 0;
    uint64_t rep_found = 0;
    if (lang) lang[0] = 0;
    *out_len = 0;
    skip_ws(&c);
    if (c.p >= c.end || *c.p != '{') return DP_MALFORMED_JSON;
    c.p++;
    skip_ws(&c);
    if (c.p < c.end && *c.p == '}') {
        c.p++;
        goto done;
    }
    for (;;) {
        size_t klen = 0;
        if (c.p >= c.end || *c.p != '"') return DP_MALFORMED_JSON;
        if ((st = parse_string(&c, key, sizeof key, &klen, 0))) return st;
        skip_ws(&c);
        if (c.p >= c.end || *c.p != ':') return DP_MALFORMED_JSON;
        c.p++;
        skip_ws(&c);
        if (c.p >= c.end) return DP_MALFORMED_JSON;
        if (klen == flen && memcmp(key, field, flen) == 0) {
            found = 1;
            if (*c.p == '"') {
                uint64_t before = c.n_repaired;
                c.content_err = 0;
                /* out has room for the whole line (x3 when repairing; without repair an invalid
                 * byte still takes 3 bytes but is then rejected, so give the same room) */
                /* decode into the top third of out: a repair pass can then expand it into out[0..)
                 * without overtaking its source (3k written after k read, and k <= n) */
                if ((st = parse_string(&c, out + 2 * n, n, &text_len, 1))) return st;
                rep_found = c.n_repaired - before; /* the last occurrence is the one kept */
                text_err = c.content_err;
                not_string = 0;
            } else {
                if ((st = skip_value(&c, 1))) return st;
                not_string = 1;
            }
        } else if (lang && lang_field && klen == llen && memcmp(key, lang_field, llen) == 0 &&
                   *c.p == '"') {
            uint8_t buf[DP_LANG_MAX +
                        1]; /* one byte more than kept: tells where a cut character begins */
            size_t blen = 0;
            cursor lc = c;
            lc.repair = 1;
            lc.n_repaired = 0;
            if ((st = parse_string(&lc, buf, sizeof buf, &blen, 1))) return st;
            c.p = lc.p;
            if (blen >
                DP_LANG_MAX) { /* cut at a character boundary: drop a character cut in half */
                blen = DP_LANG_MAX;
                while (blen > 0 && (buf[blen] & 0xC0) == 0x80) blen--;
            }
            memcpy(lang, buf, blen);
            lang[blen] = 0;
        } else {
            if ((st = skip_value(&c, 1))) return st;
        }
        skip_ws(&c);
        if (c.p >= c.end) return DP_MALFORMED_JSON;
        if (*c.p == ',') {
            c.p++;
            skip_ws(&c);
            continue;
        }
        if (*c.p == '}') {
            c.p++;
            break;
        }
        return DP_MALFORMED_JSON;
    }
done:
    skip_ws(&c);
    if (c.p != c.end) return DP_MALFORMED_JSON; /* trailing data */
    if (!found) return DP_MISSING_FIELD;
    if (not_string) return DP_FIELD_NOT_STRING;
    if (text_err) return text_err;
    /* one pass validates UTF-8 and counts scripts; invalid text is repaired or refused */
    int sc = dp_text_scan(out + 2 * n, text_len);
    if (sc < 0) {
        if (!repair) return DP_INVALID_UTF8;
        uint64_t bad = 0;
        text_len = dp_utf8_copy(out, out + 2 * n, text_len, 1, &bad);
        rep_found += bad;
        sc = dp_text_scan(out, text_len);
    } else {
        memmove(out, out + 2 * n, text_len);
    }
    if (script) *script = sc;
    *out_len = text_len;
    if (n_repaired) *n_repaired = rep_found;
    return DP_OK;
}

size_t dp_json_keys(const uint8_t *line, size_t n, char *out, size_t cap) {
    cursor c = {line, line + n, 0, 0, 0};
    size_t count = 0, o = 0;
    int full = 0;
    if (!cap) return 0;
    out[0] = 0;
    skip_ws(&c);
    if (c.p >= c.end || *c.p != '{') return 0;
    c.p++;
    skip_ws(&c);
    while (c.p < c.end && *c.p == '"') {
        const uint8_t *k0 = c.p;
        if (parse_string(&c, NULL, 0, NULL, 0)) break;
        /* the key as written, quotes and escapes included; long keys cut to 40 bytes */
        size_t klen = (size_t)(c.p - k0), shown = klen > 40 ? 40 : klen;
        while (shown < klen && shown > 1 && (k0[shown] & 0xC0) == 0x80)
            shown--; /* whole characters */
        const char *sep = count ? ", " : "";
        size_t need = strlen(sep) + shown + (shown < klen ? 4 : 0);
        if (!full && o + need + 1 <= cap) {
            o += (size_t)snprintf(out + o, cap - o, "%s%.*s%s", sep, (int)shown, (const char *)k0,
                                  shown < klen ? "...\"" : "");
        } else if (!full) {
            full = 1;
            if (o + 5 <= cap) o += (size_t)snprintf(out + o, cap - o, ", ...");
        }
        count++;
        skip_ws(&c);
        if (c.p >= c.end || *c.p != ':') break;
        c.p++;
        skip_ws(&c);
        if (c.p >= c.end || skip_value(&c, 1)) break;
        skip_ws(&c);
        if (c.p >= c.end || *c.p != ',') break;
        c.p++;
        skip_ws(&c);
    }
    return count;
}
