/* UTF-8 validation/repair, Unicode-script classification, 128-bit hash, CRC-32C. */
#include <pthread.h>
#include <string.h>

#include "dataprep/dataprep.h"

const char *const dp_status_names[DP_N_STATUS] = {
    "ok",           "malformed_json", "missing_field", "field_not_string",
    "invalid_utf8", "lone_surrogate", "empty",
};

const char *const dp_script_names[DP_N_SCRIPTS] = {
    "Common",  "Latin", "Greek", "Cyrillic", "Armenian", "Hebrew", "Arabic", "Devanagari",
    "Bengali", "Tamil", "Thai",  "Georgian", "Hangul",   "Kana",   "Han",    "Other",
};

/* ------------------------------------------------------------------ UTF-8 */

/* Length of the valid prefix of the sequence starting at s[0] (s has n > 0 bytes) and the
 * total length the lead byte announces; returns 1..4 = complete sequence length when valid,
 * or 0 with *sub = the maximal invalid subpart to replace (Unicode Table 3-7 ranges). */
int dp_utf8_seq(const uint8_t *s, size_t n, size_t *sub) {
    uint8_t c = s[0];
    int len;
    uint8_t lo = 0x80, hi = 0xBF; /* allowed range of the second byte */
    if (c < 0x80) return 1;
    if (c >= 0xC2 && c <= 0xDF)
        len = 2;
    else if (c >= 0xE0 && c <= 0xEF) {
        len = 3;
        if (c == 0xE0) lo = 0xA0;
        if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4;
        if (c == 0xF0) lo = 0x90;
        if (c == 0xF4) hi = 0x8F;
    } else {
        *sub = 1;
        return 0;
    }
    size_t i = 1;
    if (i >= n || s[i] < lo || s[i] > hi) {
        *sub = 1;
        return 0;
    }
    for (i = 2; i < (size_t)len; i++)
        if (i >= n || (s[i] & 0xC0) != 0x80) {
            *sub = i;
            return 0;
        }
    return len;
}

size_t dp_utf8_copy(uint8_t *dst, const uint8_t *src, size_t n, int repair, uint64_t *n_bad) {
    size_t i = 0, o = 0;
    while (i < n) {
        /* ASCII fast path, 8 bytes at a time */
        while (i + 8 <= n) {
            uint64_t w;
            memcpy(&w, src + i, 8);
            if (w & 0x8080808080808080ull) break;
            memcpy(dst + o, &w, 8);
            i += 8;
            o += 8;
        }
        if (i >= n) break;
        if (src[i] < 0x80) {
            dst[o++] = src[i++];
            continue;
        }
        size_t sub = 0;
        int len = dp_utf8_seq(src + i, n - i, &sub);
        if (len > 0) {
            memcpy(dst + o, src + i, (size_t)len);
            o += (size_t)len;
            i += (size_t)len;
        } else {
            if (!repair) return (size_t)-1;
            dst[o++] = 0xEF;
            dst[o++] = 0xBF;
            dst[o++] = 0xBD;
            if (n_bad) (*n_bad)++;
            i += sub;
        }
    }
    return o;
}

/* ------------------------------------------------------------------ scripts */

typedef struct {
    uint32_t lo, hi;
    uint8_t script;
} script_range;

/* Letter blocks by script, sorted by lo. Whole blocks count, so a script's own digits and marks
 * count as its letters too (an approximation good enough to call the dominant script). */
static const script_range ranges[] = {
    {0x00AA, 0x00AA, DP_SCRIPT_LATIN},      {0x00B5, 0x00B5, DP_SCRIPT_GREEK},
    {0x00BA, 0x00BA, DP_SCRIPT_LATIN},      {0x00C0, 0x00D6, DP_SCRIPT_LATIN},
    {0x00D8, 0x00F6, DP_SCRIPT_LATIN},      {0x00F8, 0x024F, DP_SCRIPT_LATIN},
    {0x0250, 0x02AF, DP_SCRIPT_LATIN},      {0x0370, 0x03FF, DP_SCRIPT_GREEK},
    {0x0400, 0x052F, DP_SCRIPT_CYRILLIC},   {0x0531, 0x058F, DP_SCRIPT_ARMENIAN},
    {0x0591, 0x05FF, DP_SCRIPT_HEBREW},     {0x0600, 0x06FF, DP_SCRIPT_ARABIC},
    {0x0750, 0x077F, DP_SCRIPT_ARABIC},     {0x0870, 0x08FF, DP_SCRIPT_ARABIC},
    {0x0900, 0x097F, DP_SCRIPT_DEVANAGARI}, {0x0980, 0x09FF, DP_SCRIPT_BENGALI},
    {0x0B80, 0x0BFF, DP_SCRIPT_TAMIL},      {0x0E00, 0x0E7F, DP_SCRIPT_THAI},
    {0x10A0, 0x10FF, DP_SCRIPT_GEORGIAN},   {0x1100, 0x11FF, DP_SCRIPT_HANGUL},
    {0x1C80, 0x1C8F, DP_SCRIPT_CYRILLIC},   {0x1C90, 0x1CBF, DP_SCRIPT_GEORGIAN},
    {0x1D00, 0x1D25, DP_SCRIPT_LATIN},      {0x1D26, 0x1D2A, DP_SCRIPT_GREEK},
    {0x1D2B, 0x1D2B, DP_SCRIPT_CYRILLIC},   {0x1D2C, 0x1D65, DP_SCRIPT_LATIN},
    {0x1D66, 0x1D6A, DP_SCRIPT_GREEK},      {0x1D6B, 0x1DBF, DP_SCRIPT_LATIN},
    {0x1E00, 0x1EFF, DP_SCRIPT_LATIN},      {0x1F00, 0x1FFF, DP_SCRIPT_GREEK},
    {0x2C60, 0x2C7F, DP_SCRIPT_LATIN},      {0x2D00, 0x2D2F, DP_SCRIPT_GEORGIAN},
    {0x2DE0, 0x2DFF, DP_SCRIPT_CYRILLIC},   {0x2E80, 0x2FDF, DP_SCRIPT_HAN},
    {0x3005, 0x3007, DP_SCRIPT_HAN},        {0x3021, 0x3029, DP_SCRIPT_HAN},
    {0x3031, 0x3035, DP_SCRIPT_KANA},       {0x3038, 0x303C, DP_SCRIPT_HAN},
    {0x3041, 0x309F, DP_SCRIPT_KANA},       {0x30A1, 0x30FA, DP_SCRIPT_KANA},
    {0x30FC, 0x30FF, DP_SCRIPT_KANA},       {0x3131, 0x318F, DP_SCRIPT_HANGUL},
    {0x31F0, 0x31FF, DP_SCRIPT_KANA},       {0x3400, 0x4DBF, DP_SCRIPT_HAN},
    {0x4E00, 0x9FFF, DP_SCRIPT_HAN},        {0xA640, 0xA69F, DP_SCRIPT_CYRILLIC},
    {0xA720, 0xA7FF, DP_SCRIPT_LATIN},      {0xA8E0, 0xA8FF, DP_SCRIPT_DEVANAGARI},
    {0xA960, 0xA97F, DP_SCRIPT_HANGUL},     {0xAB30, 0xAB64, DP_SCRIPT_LATIN},
    {0xAB65, 0xAB65, DP_SCRIPT_GREEK},      {0xAB66, 0xAB6F, DP_SCRIPT_LATIN},
    {0xAC00, 0xD7AF, DP_SCRIPT_HANGUL},     {0xD7B0, 0xD7FF, DP_SCRIPT_HANGUL},
    {0xF900, 0xFAFF, DP_SCRIPT_HAN},        {0xFB00, 0xFB06, DP_SCRIPT_LATIN},
    {0xFB13, 0xFB17, DP_SCRIPT_ARMENIAN},   {0xFB1D, 0xFB4F, DP_SCRIPT_HEBREW},
    {0xFB50, 0xFDFF, DP_SCRIPT_ARABIC},     {0xFE70, 0xFEFF, DP_SCRIPT_ARABIC},
    {0xFF21, 0xFF3A, DP_SCRIPT_LATIN},      {0xFF41, 0xFF5A, DP_SCRIPT_LATIN},
    {0xFF66, 0xFF9F, DP_SCRIPT_KANA},       {0xFFA0, 0xFFDC, DP_SCRIPT_HANGUL},
    {0x1AFF0, 0x1AFFF, DP_SCRIPT_KANA},     {0x1B000, 0x1B16F, DP_SCRIPT_KANA},
    {0x1DF00, 0x1DFFF, DP_SCRIPT_LATIN},    {0x1EE00, 0x1EEFF, DP_SCRIPT_ARABIC},
    {0x20000, 0x323AF, DP_SCRIPT_HAN},
};

/* Non-letter blocks above ASCII: punctuation, symbols, spaces, emoji, private use, specials. */
static int is_common_block(uint32_t cp) {
    return (cp >= 0x0080 && cp <= 0x00BF) || cp == 0x00D7 || cp == 0x00F7 ||
           (cp >= 0x02B0 && cp <= 0x036F) || /* modifier letters, combining diacritics */
           (cp >= 0x2000 && cp <= 0x2BFF) || (cp >= 0x3000 && cp <= 0x303F) ||
           (cp >= 0x3200 && cp <= 0x33FF) || (cp >= 0xD800 && cp <= 0xF8FF) ||
           (cp >= 0xFE00 && cp <= 0xFE6F) || (cp >= 0xFF00 && cp <= 0xFF20) ||
           (cp >= 0xFF3B && cp <= 0xFF40) || (cp >= 0xFF5B && cp <= 0xFF65) ||
           (cp >= 0xFFF0 && cp <= 0xFFFF) || (cp >= 0x1F000 && cp <= 0x1FBFF) || (cp >= 0xE0000);
}

static int script_search(uint32_t cp) {
    if (cp < 0x80)
        return ((cp | 0x20) >= 'a' && (cp | 0x20) <= 'z') ? DP_SCRIPT_LATIN : DP_SCRIPT_COMMON;
    size_t lo = 0, hi = sizeof ranges / sizeof ranges[0];
    while (lo < hi) { /* first range with hi >= cp */
        size_t mid = (lo + hi) / 2;
        if (ranges[mid].hi < cp)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo < sizeof ranges / sizeof ranges[0] && ranges[lo].lo <= cp) return ranges[lo].script;
    return is_common_block(cp) ? DP_SCRIPT_COMMON : DP_SCRIPT_OTHER;
}

/* Direct table for the code points below U+3100 (alphabets, Indic, Thai, kana): one load each. */
#define SCRIPT_TABLE_END 0x3100
static uint8_t script_table[SCRIPT_TABLE_END];
static pthread_once_t script_once = PTHREAD_ONCE_INIT;
static void script_init(void) {
    for (uint32_t cp = 0; cp < SCRIPT_TABLE_END; cp++)
        script_table[cp] = (uint8_t)script_search(cp);
}

static inline int script_fast(uint32_t cp) {
    if (cp < SCRIPT_TABLE_END) return script_table[cp];
    if (cp >= 0x4E00 && cp <= 0x9FFF) return DP_SCRIPT_HAN;
    if (cp >= 0xAC00 && cp <= 0xD7AF) return DP_SCRIPT_HANGUL;
    return script_search(cp);
}

int dp_script_of(uint32_t cp) {
    pthread_once(&script_once, script_init);
    return script_fast(cp);
}

/* ASCII letters among 8 ASCII bytes: b | 0x20 in 'a'..'z'. Adding 0x1F sets a byte's high bit
 * iff b|0x20 >= 'a'; adding 0x05 sets it iff b|0x20 >= '{'; bytes are < 0x80 so nothing carries.
 * The flags are then summed with one multiply (a portable popcount of the 8 high bits). */
static inline uint64_t ascii_letters8(uint64_t w) {
    const uint64_t ones = 0x0101010101010101ull, high = 0x8080808080808080ull;
    uint64_t l = w | (ones * 0x20);
    uint64_t ge_a = l + ones * (0x80 - 'a'), ge_brace = l + ones * (0x80 - '{');
    return (((ge_a & ~ge_brace & high) >> 7) * ones) >> 56;
}

/* 1 for the ASCII letters, by byte */
static const uint8_t ascii_letter[128] = {
    ['A'] = 1, ['B'] = 1, ['C'] = 1, ['D'] = 1, ['E'] = 1, ['F'] = 1, ['G'] = 1, ['H'] = 1,
    ['I'] = 1, ['J'] = 1, ['K'] = 1, ['L'] = 1, ['M'] = 1, ['N'] = 1, ['O'] = 1, ['P'] = 1,
    ['Q'] = 1, ['R'] = 1, ['S'] = 1, ['T'] = 1, ['U'] = 1, ['V'] = 1, ['W'] = 1, ['X'] = 1,
    ['Y'] = 1, ['Z'] = 1, ['a'] = 1, ['b'] = 1, ['c'] = 1, ['d'] = 1, ['e'] = 1, ['f'] = 1,
    ['g'] = 1, ['h'] = 1, ['i'] = 1, ['j'] = 1, ['k'] = 1, ['l'] = 1, ['m'] = 1, ['n'] = 1,
    ['o'] = 1, ['p'] = 1, ['q'] = 1, ['r'] = 1, ['s'] = 1, ['t'] = 1, ['u'] = 1, ['v'] = 1,
    ['w'] = 1, ['x'] = 1, ['y'] = 1, ['z'] = 1,
};

int dp_text_scan(const uint8_t *s, size_t n) {
    uint64_t count[DP_N_SCRIPTS] = {0};
    uint64_t latin = 0; /* ASCII letters */
    /* Letters of the non-ASCII script being read are counted in a register (`run`) and added to
     * count[] when the script changes: incrementing one memory counter per character would
     * serialise on store-to-load latency. */
    int cur = DP_SCRIPT_COMMON;
    uint64_t run = 0;
    size_t i = 0;
    pthread_once(&script_once, script_init);
    while (i < n) {
        uint8_t c = s[i];
        uint32_t cp;
        if (c < 0x80) {
            /* ASCII: 8 at a time while the next 8 bytes are all ASCII, else this byte alone */
            uint64_t w;
            if (i + 8 <= n && (memcpy(&w, s + i, 8), !(w & 0x8080808080808080ull))) {
                latin += ascii_letters8(w);
                i += 8;
            } else {
                latin += ascii_letter[c];
                i++;
            }
            continue;
        }
        /* decode one multi-byte sequence, checking it as Unicode Table 3-7 does */
        if (c >= 0xC2 && c <= 0xDF) {
            if (i + 1 >= n || (s[i + 1] & 0xC0) != 0x80) return -1;
            cp = (uint32_t)(c & 0x1F) << 6 | (s[i + 1] & 0x3F);
            i += 2;
        } else if (c >= 0xE0 && c <= 0xEF) {
            if (i + 2 >= n) return -1;
            uint8_t b1 = s[i + 1], lo = c == 0xE0 ? 0xA0 : 0x80, hi = c == 0xED ? 0x9F : 0xBF;
            if (b1 < lo || b1 > hi || (s[i + 2] & 0xC0) != 0x80) return -1;
            cp = (uint32_t)(c & 0x0F) << 12 | (uint32_t)(b1 & 0x3F) << 6 | (s[i + 2] & 0x3F);
            i += 3;
        } else if (c >= 0xF0 && c <= 0xF4) {
            if (i + 3 >= n) return -1;
            uint8_t b1 = s[i + 1], lo = c == 0xF0 ? 0x90 : 0x80, hi = c == 0xF4 ? 0x8F : 0xBF;
            if (b1 < lo || b1 > hi || (s[i + 2] & 0xC0) != 0x80 || (s[i + 3] & 0xC0) != 0x80)
                return -1;
            cp = (uint32_t)(c & 0x07) << 18 | (uint32_t)(b1 & 0x3F) << 12 |
                 (uint32_t)(s[i + 2] & 0x3F) << 6 | (s[i + 3] & 0x3F);
            i += 4;
        } else {
            return -1;
        }
        int sc = script_fast(cp);
        if (sc == cur)
            run++;
        else if (sc != DP_SCRIPT_COMMON) {
            count[cur] += run;
            cur = sc;
            run = 1;
        }
    }
    count[cur] += run;
    count[DP_SCRIPT_LATIN] += latin;
    /* dominant: most letters, ties to the lower id; no letters at all: Common */
    int best = DP_SCRIPT_COMMON;
    uint64_t best_n = 0;
    for (int k = 1; k < DP_N_SCRIPTS; k++)
        if (count[k] > best_n) {
            best_n = count[k];
            best = k;
        }
    return best;
}

int dp_dominant_script(const uint8_t *s, size_t n) {
    int sc = dp_text_scan(s, n);
    return sc < 0 ? DP_SCRIPT_COMMON : sc;
}

/* ------------------------------------------------------------------ hash */

static inline uint64_t rotl64(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }
static inline uint64_t fmix64(uint64_t k) {
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdull;
    k ^= k >> 33;
    k *= 0xc4ceb9fe1a85ec53ull;
    k ^= k >> 33;
    return k;
}

/* Two 64-bit lanes mixed word by word (multiply-rotate, MurmurHash3-x64 style), then avalanched
 * with the length. Used only to find exact duplicates; not collision-resistant against attackers.
 */
void dp_hash128(const uint8_t *s, size_t n, uint64_t out[2]) {
    const uint64_t c1 = 0x87c37b91114253d5ull, c2 = 0x4cf5ad432745937full;
    uint64_t h1 = 0x9e3779b97f4a7c15ull, h2 = 0x243f6a8885a308d3ull;
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        uint64_t k1, k2;
        memcpy(&k1, s + i, 8);
        memcpy(&k2, s + i + 8, 8);
        k1 *= c1;
        k1 = rotl64(k1, 31);
        k1 *= c2;
        h1 ^= k1;
        h1 = rotl64(h1, 27);
        h1 += h2;
        h1 = h1 * 5 + 0x52dce729;
        k2 *= c2;
        k2 = rotl64(k2, 33);
        k2 *= c1;
        h2 ^= k2;
        h2 = rotl64(h2, 31);
        h2 += h1;
        h2 = h2 * 5 + 0x38495ab5;
    }
    uint8_t tail[16] = {0};
    memcpy(tail, s + i, n - i);
    uint64_t k1, k2;
    memcpy(&k1, tail, 8);
    memcpy(&k2, tail + 8, 8);
    k1 *= c1;
    k1 = rotl64(k1, 31);
    k1 *= c2;
    h1 ^= k1;
    k2 *= c2;
    k2 = rotl64(k2, 33);
    k2 *= c1;
    h2 ^= k2;
    h1 ^= (uint64_t)n;
    h2 ^= (uint64_t)n;
    h1 += h2;
    h2 += h1;
    h1 = fmix64(h1);
    h2 = fmix64(h2);
    h1 += h2;
    h2 += h1;
    out[0] = h1;
    out[1] = h2;
}

/* ------------------------------------------------------------------ CRC-32C */

static uint32_t crc_table[256];
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;

static void crc_init(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1; /* reflected Castagnoli */
        crc_table[i] = c;
    }
}

uint32_t dp_crc32c(uint32_t crc, const uint8_t *buf, size_t n) {
    pthread_once(&crc_once, crc_init);
    crc = ~crc;
    for (size_t i = 0; i < n; i++) crc = crc_table[(crc ^ buf[i]) & 0xFF] ^ (crc >> 8);
    return ~crc;
}
