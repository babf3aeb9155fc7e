#include "engines/diffusion/clip_tokenizer.hpp"

#include "unicode.h" // llama.cpp's Unicode tables (third_party/llama.cpp/src)

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <array>
#include <fstream>
#include <optional>
#include <queue>
#include <span>
#include <sstream>
#include <stdexcept>

namespace mmserve::diffusion {
namespace {

constexpr std::string_view kStartOfText = "<|startoftext|>";
constexpr std::string_view kEndOfText = "<|endoftext|>";
constexpr int kIdsPerChunk = ClipTokenizer::kChunkLength - 2;
constexpr size_t kMaxCacheEntries = 1 << 16;
constexpr size_t kMaxCachedWordBytes = 256;

// An input byte that is not part of valid UTF-8 is carried as U+DC00 + byte (Python's
// "surrogateescape"); valid UTF-8 never decodes to these.
constexpr uint32_t kEscapeBase = 0xDC00;
bool is_escaped_byte(uint32_t cpt) {
  return cpt >= kEscapeBase + 0x80 && cpt <= kEscapeBase + 0xFF;
}

using Cpts = std::vector<uint32_t>;

// Strict UTF-8 (no overlongs, surrogates or values past U+10FFFF), as Python decodes it.
Cpts decode_utf8(std::string_view text) {
  Cpts cpts;
  cpts.reserve(text.size());
  const auto byte = [&](size_t i) { return static_cast<uint8_t>(text[i]); };
  const auto continuation = [&](size_t i, uint8_t lo = 0x80, uint8_t hi = 0xBF) {
    return i < text.size() && byte(i) >= lo && byte(i) <= hi;
  };
  size_t i = 0;
  while (i < text.size()) {
    const uint8_t b = byte(i);
    if (b < 0x80) {
      cpts.push_back(b);
      i += 1;
    } else if (b >= 0xC2 && b <= 0xDF && continuation(i + 1)) {
      cpts.push_back((b & 0x1Fu) << 6 | (byte(i + 1) & 0x3Fu));
      i += 2;
    } else if (b >= 0xE0 && b <= 0xEF && continuation(i + 1, b == 0xE0 ? 0xA0 : 0x80, b == 0xED ? 0x9F : 0xBF) &&
               continuation(i + 2)) {
      cpts.push_back((b & 0x0Fu) << 12 | (byte(i + 1) & 0x3Fu) << 6 | (byte(i + 2) & 0x3Fu));
      i += 3;
    } else if (b >= 0xF0 && b <= 0xF4 && continuation(i + 1, b == 0xF0 ? 0x90 : 0x80, b == 0xF4 ? 0x8F : 0xBF) &&
               continuation(i + 2) && continuation(i + 3)) {
      cpts.push_back((b & 0x07u) << 18 | (byte(i + 1) & 0x3Fu) << 12 | (byte(i + 2) & 0x3Fu) << 6 |
                     (byte(i + 3) & 0x3Fu));
      i += 4;
    } else {
      cpts.push_back(kEscapeBase + b);
      i += 1;
    }
  }
  return cpts;
}

void append_utf8(std::string& out, uint32_t cpt) {
  if (is_escaped_byte(cpt)) {
    out.push_back(static_cast<char>(cpt - kEscapeBase));
  } else if (cpt < 0x80) {
    out.push_back(static_cast<char>(cpt));
  } else if (cpt < 0x800) {
    out.push_back(static_cast<char>(0xC0 | cpt >> 6));
    out.push_back(static_cast<char>(0x80 | (cpt & 0x3F)));
  } else if (cpt < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | cpt >> 12));
    out.push_back(static_cast<char>(0x80 | (cpt >> 6 & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cpt & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | cpt >> 18));
    out.push_back(static_cast<char>(0x80 | (cpt >> 12 & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cpt >> 6 & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cpt & 0x3F)));
  }
}

// Character classes of CLIP's pattern: \p{L}, \p{N} and \s (Unicode White_Space). Escaped bytes
// are none of them.
bool is_space(uint32_t cpt) {
  return !is_escaped_byte(cpt) && unicode_cpt_flags_from_cpt(cpt).is_whitespace;
}
bool is_letter(uint32_t cpt) {
  return !is_escaped_byte(cpt) && unicode_cpt_flags_from_cpt(cpt).is_letter;
}
bool is_number(uint32_t cpt) {
  return !is_escaped_byte(cpt) && unicode_cpt_flags_from_cpt(cpt).is_number;
}

// ---- html.unescape (Python's html/__init__.py, HTML 5 rules) ----

// Named character references: the HTML 4 set (Latin-1, symbols, Greek, "special") with ';', "apos;",
// and the legacy names HTML 5 also accepts without ';'. Python knows all 2231 HTML 5 names; the
// others are left as they are here. Sorted for binary search.
struct NamedEntity {
  std::string_view name;
  uint32_t cpt;
};
constexpr NamedEntity kNamedEntities[] = {
    {"AElig", 0xC6},     {"AElig;", 0xC6},     {"AMP", 0x26},        {"AMP;", 0x26},      {"Aacute", 0xC1},
    {"Aacute;", 0xC1},   {"Acirc", 0xC2},      {"Acirc;", 0xC2},     {"Agrave", 0xC0},    {"Agrave;", 0xC0},
    {"Alpha;", 0x391},   {"Aring", 0xC5},      {"Aring;", 0xC5},     {"Atilde", 0xC3},    {"Atilde;", 0xC3},
    {"Auml", 0xC4},      {"Auml;", 0xC4},      {"Beta;", 0x392},     {"COPY", 0xA9},      {"COPY;", 0xA9},
    {"Ccedil", 0xC7},    {"Ccedil;", 0xC7},    {"Chi;", 0x3A7},      {"Dagger;", 0x2021}, {"Delta;", 0x394},
    {"ETH", 0xD0},       {"ETH;", 0xD0},       {"Eacute", 0xC9},     {"Eacute;", 0xC9},   {"Ecirc", 0xCA},
    {"Ecirc;", 0xCA},    {"Egrave", 0xC8},     {"Egrave;", 0xC8},    {"Epsilon;", 0x395}, {"Eta;", 0x397},
    {"Euml", 0xCB},      {"Euml;", 0xCB},      {"GT", 0x3E},         {"GT;", 0x3E},       {"Gamma;", 0x393},
    {"Iacute", 0xCD},    {"Iacute;", 0xCD},    {"Icirc", 0xCE},      {"Icirc;", 0xCE},    {"Igrave", 0xCC},
    {"Igrave;", 0xCC},   {"Iota;", 0x399},     {"Iuml", 0xCF},       {"Iuml;", 0xCF},     {"Kappa;", 0x39A},
    {"LT", 0x3C},        {"LT;", 0x3C},        {"Lambda;", 0x39B},   {"Mu;", 0x39C},      {"Ntilde", 0xD1},
    {"Ntilde;", 0xD1},   {"Nu;", 0x39D},       {"OElig;", 0x152},    {"Oacute", 0xD3},    {"Oacute;", 0xD3},
    {"Ocirc", 0xD4},     {"Ocirc;", 0xD4},     {"Ograve", 0xD2},     {"Ograve;", 0xD2},   {"Omega;", 0x3A9},
    {"Omicron;", 0x39F}, {"Oslash", 0xD8},     {"Oslash;", 0xD8},    {"Otilde", 0xD5},    {"Otilde;", 0xD5},
    {"Ouml", 0xD6},      {"Ouml;", 0xD6},      {"Phi;", 0x3A6},      {"Pi;", 0x3A0},      {"Prime;", 0x2033},
    {"Psi;", 0x3A8},     {"QUOT", 0x22},       {"QUOT;", 0x22},      {"REG", 0xAE},       {"REG;", 0xAE},
    {"Rho;", 0x3A1},     {"Scaron;", 0x160},   {"Sigma;", 0x3A3},    {"THORN", 0xDE},     {"THORN;", 0xDE},
    {"Tau;", 0x3A4},     {"Theta;", 0x398},    {"Uacute", 0xDA},     {"Uacute;", 0xDA},   {"Ucirc", 0xDB},
    {"Ucirc;", 0xDB},    {"Ugrave", 0xD9},     {"Ugrave;", 0xD9},    {"Upsilon;", 0x3A5}, {"Uuml", 0xDC},
    {"Uuml;", 0xDC},     {"Xi;", 0x39E},       {"Yacute", 0xDD},     {"Yacute;", 0xDD},   {"Yuml;", 0x178},
    {"Zeta;", 0x396},    {"aacute", 0xE1},     {"aacute;", 0xE1},    {"acirc", 0xE2},     {"acirc;", 0xE2},
    {"acute", 0xB4},     {"acute;", 0xB4},     {"aelig", 0xE6},      {"aelig;", 0xE6},    {"agrave", 0xE0},
    {"agrave;", 0xE0},   {"alefsym;", 0x2135}, {"alpha;", 0x3B1},    {"amp", 0x26},       {"amp;", 0x26},
    {"and;", 0x2227},    {"ang;", 0x2220},     {"apos;", 0x27},      {"aring", 0xE5},     {"aring;", 0xE5},
    {"asymp;", 0x2248},  {"atilde", 0xE3},     {"atilde;", 0xE3},    {"auml", 0xE4},      {"auml;", 0xE4},
    {"bdquo;", 0x201E},  {"beta;", 0x3B2},     {"brvbar", 0xA6},     {"brvbar;", 0xA6},   {"bull;", 0x2022},
    {"cap;", 0x2229},    {"ccedil", 0xE7},     {"ccedil;", 0xE7},    {"cedil", 0xB8},     {"cedil;", 0xB8},
    {"cent", 0xA2},      {"cent;", 0xA2},      {"chi;", 0x3C7},      {"circ;", 0x2C6},    {"clubs;", 0x2663},
    {"cong;", 0x2245},   {"copy", 0xA9},       {"copy;", 0xA9},      {"crarr;", 0x21B5},  {"cup;", 0x222A},
    {"curren", 0xA4},    {"curren;", 0xA4},    {"dArr;", 0x21D3},    {"dagger;", 0x2020}, {"darr;", 0x2193},
    {"deg", 0xB0},       {"deg;", 0xB0},       {"delta;", 0x3B4},    {"diams;", 0x2666},  {"divide", 0xF7},
    {"divide;", 0xF7},   {"eacute", 0xE9},     {"eacute;", 0xE9},    {"ecirc", 0xEA},     {"ecirc;", 0xEA},
    {"egrave", 0xE8},    {"egrave;", 0xE8},    {"empty;", 0x2205},   {"emsp;", 0x2003},   {"ensp;", 0x2002},
    {"epsilon;", 0x3B5}, {"equiv;", 0x2261},   {"eta;", 0x3B7},      {"eth", 0xF0},       {"eth;", 0xF0},
    {"euml", 0xEB},      {"euml;", 0xEB},      {"euro;", 0x20AC},    {"exist;", 0x2203},  {"fnof;", 0x192},
    {"forall;", 0x2200}, {"frac12", 0xBD},     {"frac12;", 0xBD},    {"frac14", 0xBC},    {"frac14;", 0xBC},
    {"frac34", 0xBE},    {"frac34;", 0xBE},    {"frasl;", 0x2044},   {"gamma;", 0x3B3},   {"ge;", 0x2265},
    {"gt", 0x3E},        {"gt;", 0x3E},        {"hArr;", 0x21D4},    {"harr;", 0x2194},   {"hearts;", 0x2665},
    {"hellip;", 0x2026}, {"iacute", 0xED},     {"iacute;", 0xED},    {"icirc", 0xEE},     {"icirc;", 0xEE},
    {"iexcl", 0xA1},     {"iexcl;", 0xA1},     {"igrave", 0xEC},     {"igrave;", 0xEC},   {"image;", 0x2111},
    {"infin;", 0x221E},  {"int;", 0x222B},     {"iota;", 0x3B9},     {"iquest", 0xBF},    {"iquest;", 0xBF},
    {"isin;", 0x2208},   {"iuml", 0xEF},       {"iuml;", 0xEF},      {"kappa;", 0x3BA},   {"lArr;", 0x21D0},
    {"lambda;", 0x3BB},  {"lang;", 0x27E8},    {"laquo", 0xAB},      {"laquo;", 0xAB},    {"larr;", 0x2190},
    {"lceil;", 0x2308},  {"ldquo;", 0x201C},   {"le;", 0x2264},      {"lfloor;", 0x230A}, {"lowast;", 0x2217},
    {"loz;", 0x25CA},    {"lrm;", 0x200E},     {"lsaquo;", 0x2039},  {"lsquo;", 0x2018},  {"lt", 0x3C},
    {"lt;", 0x3C},       {"macr", 0xAF},       {"macr;", 0xAF},      {"mdash;", 0x2014},  {"micro", 0xB5},
    {"micro;", 0xB5},    {"middot", 0xB7},     {"middot;", 0xB7},    {"minus;", 0x2212},  {"mu;", 0x3BC},
    {"nabla;", 0x2207},  {"nbsp", 0xA0},       {"nbsp;", 0xA0},      {"ndash;", 0x2013},  {"ne;", 0x2260},
    {"ni;", 0x220B},     {"not", 0xAC},        {"not;", 0xAC},       {"notin;", 0x2209},  {"nsub;", 0x2284},
    {"ntilde", 0xF1},    {"ntilde;", 0xF1},    {"nu;", 0x3BD},       {"oacute", 0xF3},    {"oacute;", 0xF3},
    {"ocirc", 0xF4},     {"ocirc;", 0xF4},     {"oelig;", 0x153},    {"ograve", 0xF2},    {"ograve;", 0xF2},
    {"oline;", 0x203E},  {"omega;", 0x3C9},    {"omicron;", 0x3BF},  {"oplus;", 0x2295},  {"or;", 0x2228},
    {"ordf", 0xAA},      {"ordf;", 0xAA},      {"ordm", 0xBA},       {"ordm;", 0xBA},     {"oslash", 0xF8},
    {"oslash;", 0xF8},   {"otilde", 0xF5},     {"otilde;", 0xF5},    {"otimes;", 0x2297}, {"ouml", 0xF6},
    {"ouml;", 0xF6},     {"para", 0xB6},       {"para;", 0xB6},      {"part;", 0x2202},   {"permil;", 0x2030},
    {"perp;", 0x22A5},   {"phi;", 0x3C6},      {"pi;", 0x3C0},       {"piv;", 0x3D6},     {"plusmn", 0xB1},
    {"plusmn;", 0xB1},   {"pound", 0xA3},      {"pound;", 0xA3},     {"prime;", 0x2032},  {"prod;", 0x220F},
    {"prop;", 0x221D},   {"psi;", 0x3C8},      {"quot", 0x22},       {"quot;", 0x22},     {"rArr;", 0x21D2},
    {"radic;", 0x221A},  {"rang;", 0x27E9},    {"raquo", 0xBB},      {"raquo;", 0xBB},    {"rarr;", 0x2192},
    {"rceil;", 0x2309},  {"rdquo;", 0x201D},   {"real;", 0x211C},    {"reg", 0xAE},       {"reg;", 0xAE},
    {"rfloor;", 0x230B}, {"rho;", 0x3C1},      {"rlm;", 0x200F},     {"rsaquo;", 0x203A}, {"rsquo;", 0x2019},
    {"sbquo;", 0x201A},  {"scaron;", 0x161},   {"sdot;", 0x22C5},    {"sect", 0xA7},      {"sect;", 0xA7},
    {"shy", 0xAD},       {"shy;", 0xAD},       {"sigma;", 0x3C3},    {"sigmaf;", 0x3C2},  {"sim;", 0x223C},
    {"spades;", 0x2660}, {"sub;", 0x2282},     {"sube;", 0x2286},    {"sum;", 0x2211},    {"sup1", 0xB9},
    {"sup1;", 0xB9},     {"sup2", 0xB2},       {"sup2;", 0xB2},      {"sup3", 0xB3},      {"sup3;", 0xB3},
    {"sup;", 0x2283},    {"supe;", 0x2287},    {"szlig", 0xDF},      {"szlig;", 0xDF},    {"tau;", 0x3C4},
    {"there4;", 0x2234}, {"theta;", 0x3B8},    {"thetasym;", 0x3D1}, {"thinsp;", 0x2009}, {"thorn", 0xFE},
    {"thorn;", 0xFE},    {"tilde;", 0x2DC},    {"times", 0xD7},      {"times;", 0xD7},    {"trade;", 0x2122},
    {"uArr;", 0x21D1},   {"uacute", 0xFA},     {"uacute;", 0xFA},    {"uarr;", 0x2191},   {"ucirc", 0xFB},
    {"ucirc;", 0xFB},    {"ugrave", 0xF9},     {"ugrave;", 0xF9},    {"uml", 0xA8},       {"uml;", 0xA8},
    {"upsih;", 0x3D2},   {"upsilon;", 0x3C5},  {"uuml", 0xFC},       {"uuml;", 0xFC},     {"weierp;", 0x2118},
    {"xi;", 0x3BE},      {"yacute", 0xFD},     {"yacute;", 0xFD},    {"yen", 0xA5},       {"yen;", 0xA5},
    {"yuml", 0xFF},      {"yuml;", 0xFF},      {"zeta;", 0x3B6},     {"zwj;", 0x200D},    {"zwnj;", 0x200C}};

std::optional<uint32_t> named_entity(const Cpts& text, size_t begin, size_t end) {
  std::string name;
  for (size_t i = begin; i < end; ++i) {
    if (text[i] >= 0x80) return std::nullopt;
    name.push_back(static_cast<char>(text[i]));
  }
  const auto found =
      std::lower_bound(std::begin(kNamedEntities), std::end(kNamedEntities), name,
                       [](const NamedEntity& entity, const std::string& key) { return entity.name < key; });
  if (found == std::end(kNamedEntities) || found->name != name) return std::nullopt;
  return found->cpt;
}

// What a numeric reference stands for; nullopt: nothing (Python drops these code points).
std::optional<uint32_t> numeric_entity(uint32_t value) {
  // Windows-1252 for 0x80..0x9F, as the HTML 5 standard (and Python's _invalid_charrefs) says.
  static constexpr uint16_t kWindows1252[32] = {0x20AC, 0x81,   0x201A, 0x0192, 0x201E, 0x2026, 0x2020, 0x2021,
                                                0x02C6, 0x2030, 0x0160, 0x2039, 0x0152, 0x8D,   0x017D, 0x8F,
                                                0x90,   0x2018, 0x2019, 0x201C, 0x201D, 0x2022, 0x2013, 0x2014,
                                                0x02DC, 0x2122, 0x0161, 0x203A, 0x0153, 0x9D,   0x017E, 0x0178};
  if (value == 0) return 0xFFFD;
  if (value == 0x0D) return 0x0D;
  if (value >= 0x80 && value <= 0x9F) return kWindows1252[value - 0x80];
  if ((value >= 0xD800 && value <= 0xDFFF) || value > 0x10FFFF) return 0xFFFD;
  if ((value >= 0x01 && value <= 0x08) || value == 0x0B || (value >= 0x0E && value <= 0x1F) || value == 0x7F ||
      (value >= 0xFDD0 && value <= 0xFDEF) || (value & 0xFFFE) == 0xFFFE) {
    return std::nullopt;
  }
  return value;
}

bool is_digit(uint32_t cpt, bool hex) {
  return (cpt >= '0' && cpt <= '9') || (hex && ((cpt >= 'a' && cpt <= 'f') || (cpt >= 'A' && cpt <= 'F')));
}

// Python's html.unescape: the references matched by
//   &(#[0-9]+;?|#[xX][0-9a-fA-F]+;?|[^\t\n\f <&#;]{1,32};?)
// are replaced; a name that is not known as a whole may start with a legacy name ("&ampx" -> "&x").
Cpts html_unescape(const Cpts& text) {
  if (std::find(text.begin(), text.end(), '&') == text.end()) return text;
  Cpts out;
  out.reserve(text.size());
  const size_t n = text.size();
  size_t i = 0;
  while (i < n) {
    if (text[i] != '&') {
      out.push_back(text[i++]);
      continue;
    }
    const size_t start = i + 1;
    if (start < n && text[start] == '#') {
      size_t k = start + 1;
      const bool hex = k + 1 < n && (text[k] == 'x' || text[k] == 'X') && is_digit(text[k + 1], true);
      if (hex) ++k;
      const size_t digits = k;
      uint32_t value = 0;
      for (; k < n && is_digit(text[k], hex); ++k) {
        const uint32_t digit = text[k] <= '9' ? text[k] - '0' : (text[k] | 0x20) - 'a' + 10;
        value = std::min<uint32_t>(value * (hex ? 16 : 10) + digit, 0x110000); // saturates past U+10FFFF
      }
      if (k == digits) { // "&#" with no digits: not a reference
        out.push_back(text[i++]);
        continue;
      }
      if (k < n && text[k] == ';') ++k;
      if (const auto cpt = numeric_entity(value)) out.push_back(*cpt);
      i = k;
      continue;
    }
    size_t k = start;
    const auto name_char = [](uint32_t c) {
      return c != '\t' && c != '\n' && c != '\f' && c != ' ' && c != '<' && c != '&' && c != '#' && c != ';';
    };
    while (k < n && k - start < 32 && name_char(text[k]))
      ++k;
    if (k == start) {
      out.push_back(text[i++]);
      continue;
    }
    if (k < n && text[k] == ';') ++k;
    if (const auto cpt = named_entity(text, start, k)) {
      out.push_back(*cpt);
    } else {
      size_t length = k - start - 1;
      for (; length >= 2; --length) {
        if (const auto prefix = named_entity(text, start, start + length)) {
          out.push_back(*prefix);
          break;
        }
      }
      if (length < 2) {
        out.push_back('&');
        length = 0;
      }
      out.insert(out.end(), text.begin() + static_cast<std::ptrdiff_t>(start + length),
                 text.begin() + static_cast<std::ptrdiff_t>(k));
    }
    i = k;
  }
  return out;
}

// ---- basic_clean / whitespace_clean / lower ----

// Whitespace runs -> one space, none at either end.
Cpts whitespace_clean(const Cpts& text) {
  Cpts out;
  out.reserve(text.size());
  bool pending_space = false;
  for (const uint32_t cpt : text) {
    if (is_space(cpt)) {
      pending_space = true;
      continue;
    }
    if (pending_space && !out.empty()) out.push_back(' ');
    pending_space = false;
    out.push_back(cpt);
  }
  return out;
}

// Python's str.lower() puts a capital sigma in its final form when it ends a word: when, skipping
// Case_Ignorable characters, a Cased one precedes it and none follows (CPython's
// handle_capital_sigma(), Unicode's Final_Sigma condition). Python only ever sees whether a character is
// case-ignorable, else cased, so these tables hold exactly that, taken from Python 3.11 (Unicode 14):
// kCaseIgnorableRanges the Case_Ignorable characters, kCasedRanges the Cased ones that are not also
// case-ignorable.
struct CodeRange {
  uint32_t first, last;
};
constexpr CodeRange kCasedRanges[] = {
    {0x41, 0x5A},       {0x61, 0x7A},       {0xAA, 0xAA},       {0xB5, 0xB5},       {0xBA, 0xBA},
    {0xC0, 0xD6},       {0xD8, 0xF6},       {0xF8, 0x1BA},      {0x1BC, 0x1BF},     {0x1C4, 0x293},
    {0x295, 0x2AF},     {0x370, 0x373},     {0x376, 0x377},     {0x37B, 0x37D},     {0x37F, 0x37F},
    {0x386, 0x386},     {0x388, 0x38A},     {0x38C, 0x38C},     {0x38E, 0x3A1},     {0x3A3, 0x3F5},
    {0x3F7, 0x481},     {0x48A, 0x52F},     {0x531, 0x556},     {0x560, 0x588},     {0x10A0, 0x10C5},
    {0x10C7, 0x10C7},   {0x10CD, 0x10CD},   {0x10D0, 0x10FA},   {0x10FD, 0x10FF},   {0x13A0, 0x13F5},
    {0x13F8, 0x13FD},   {0x1C80, 0x1C88},   {0x1C90, 0x1CBA},   {0x1CBD, 0x1CBF},   {0x1D00, 0x1D2B},
    {0x1D6B, 0x1D77},   {0x1D79, 0x1D9A},   {0x1E00, 0x1F15},   {0x1F18, 0x1F1D},   {0x1F20, 0x1F45},
    {0x1F48, 0x1F4D},   {0x1F50, 0x1F57},   {0x1F59, 0x1F59},   {0x1F5B, 0x1F5B},   {0x1F5D, 0x1F5D},
    {0x1F5F, 0x1F7D},   {0x1F80, 0x1FB4},   {0x1FB6, 0x1FBC},   {0x1FBE, 0x1FBE},   {0x1FC2, 0x1FC4},
    {0x1FC6, 0x1FCC},   {0x1FD0, 0x1FD3},   {0x1FD6, 0x1FDB},   {0x1FE0, 0x1FEC},   {0x1FF2, 0x1FF4},
    {0x1FF6, 0x1FFC},   {0x2102, 0x2102},   {0x2107, 0x2107},   {0x210A, 0x2113},   {0x2115, 0x2115},
    {0x2119, 0x211D},   {0x2124, 0x2124},   {0x2126, 0x2126},   {0x2128, 0x2128},   {0x212A, 0x212D},
    {0x212F, 0x2134},   {0x2139, 0x2139},   {0x213C, 0x213F},   {0x2145, 0x2149},   {0x214E, 0x214E},
    {0x2160, 0x217F},   {0x2183, 0x2184},   {0x24B6, 0x24E9},   {0x2C00, 0x2C7B},   {0x2C7E, 0x2CE4},
    {0x2CEB, 0x2CEE},   {0x2CF2, 0x2CF3},   {0x2D00, 0x2D25},   {0x2D27, 0x2D27},   {0x2D2D, 0x2D2D},
    {0xA640, 0xA66D},   {0xA680, 0xA69B},   {0xA722, 0xA76F},   {0xA771, 0xA787},   {0xA78B, 0xA78E},
    {0xA790, 0xA7CA},   {0xA7D0, 0xA7D1},   {0xA7D3, 0xA7D3},   {0xA7D5, 0xA7D9},   {0xA7F5, 0xA7F6},
    {0xA7FA, 0xA7FA},   {0xAB30, 0xAB5A},   {0xAB60, 0xAB68},   {0xAB70, 0xABBF},   {0xFB00, 0xFB06},
    {0xFB13, 0xFB17},   {0xFF21, 0xFF3A},   {0xFF41, 0xFF5A},   {0x10400, 0x1044F}, {0x104B0, 0x104D3},
    {0x104D8, 0x104FB}, {0x10570, 0x1057A}, {0x1057C, 0x1058A}, {0x1058C, 0x10592}, {0x10594, 0x10595},
    {0x10597, 0x105A1}, {0x105A3, 0x105B1}, {0x105B3, 0x105B9}, {0x105BB, 0x105BC}, {0x10C80, 0x10CB2},
    {0x10CC0, 0x10CF2}, {0x118A0, 0x118DF}, {0x16E40, 0x16E7F}, {0x1D400, 0x1D454}, {0x1D456, 0x1D49C},
    {0x1D49E, 0x1D49F}, {0x1D4A2, 0x1D4A2}, {0x1D4A5, 0x1D4A6}, {0x1D4A9, 0x1D4AC}, {0x1D4AE, 0x1D4B9},
    {0x1D4BB, 0x1D4BB}, {0x1D4BD, 0x1D4C3}, {0x1D4C5, 0x1D505}, {0x1D507, 0x1D50A}, {0x1D50D, 0x1D514},
    {0x1D516, 0x1D51C}, {0x1D51E, 0x1D539}, {0x1D53B, 0x1D53E}, {0x1D540, 0x1D544}, {0x1D546, 0x1D546},
    {0x1D54A, 0x1D550}, {0x1D552, 0x1D6A5}, {0x1D6A8, 0x1D6C0}, {0x1D6C2, 0x1D6DA}, {0x1D6DC, 0x1D6FA},
    {0x1D6FC, 0x1D714}, {0x1D716, 0x1D734}, {0x1D736, 0x1D74E}, {0x1D750, 0x1D76E}, {0x1D770, 0x1D788},
    {0x1D78A, 0x1D7A8}, {0x1D7AA, 0x1D7C2}, {0x1D7C4, 0x1D7CB}, {0x1DF00, 0x1DF09}, {0x1DF0B, 0x1DF1E},
    {0x1E900, 0x1E943}, {0x1F130, 0x1F149}, {0x1F150, 0x1F169}, {0x1F170, 0x1F189}};
constexpr CodeRange kCaseIgnorableRanges[] = {
    {0x27, 0x27},       {0x2E, 0x2E},       {0x3A, 0x3A},       {0x5E, 0x5E},       {0x60, 0x60},
    {0xA8, 0xA8},       {0xAD, 0xAD},       {0xAF, 0xAF},       {0xB4, 0xB4},       {0xB7, 0xB8},
    {0x2B0, 0x36F},     {0x374, 0x375},     {0x37A, 0x37A},     {0x384, 0x385},     {0x387, 0x387},
    {0x483, 0x489},     {0x559, 0x559},     {0x55F, 0x55F},     {0x591, 0x5BD},     {0x5BF, 0x5BF},
    {0x5C1, 0x5C2},     {0x5C4, 0x5C5},     {0x5C7, 0x5C7},     {0x5F4, 0x5F4},     {0x600, 0x605},
    {0x610, 0x61A},     {0x61C, 0x61C},     {0x640, 0x640},     {0x64B, 0x65F},     {0x670, 0x670},
    {0x6D6, 0x6DD},     {0x6DF, 0x6E8},     {0x6EA, 0x6ED},     {0x70F, 0x70F},     {0x711, 0x711},
    {0x730, 0x74A},     {0x7A6, 0x7B0},     {0x7EB, 0x7F5},     {0x7FA, 0x7FA},     {0x7FD, 0x7FD},
    {0x816, 0x82D},     {0x859, 0x85B},     {0x888, 0x888},     {0x890, 0x891},     {0x898, 0x89F},
    {0x8C9, 0x902},     {0x93A, 0x93A},     {0x93C, 0x93C},     {0x941, 0x948},     {0x94D, 0x94D},
    {0x951, 0x957},     {0x962, 0x963},     {0x971, 0x971},     {0x981, 0x981},     {0x9BC, 0x9BC},
    {0x9C1, 0x9C4},     {0x9CD, 0x9CD},     {0x9E2, 0x9E3},     {0x9FE, 0x9FE},     {0xA01, 0xA02},
    {0xA3C, 0xA3C},     {0xA41, 0xA42},     {0xA47, 0xA48},     {0xA4B, 0xA4D},     {0xA51, 0xA51},
    {0xA70, 0xA71},     {0xA75, 0xA75},     {0xA81, 0xA82},     {0xABC, 0xABC},     {0xAC1, 0xAC5},
    {0xAC7, 0xAC8},     {0xACD, 0xACD},     {0xAE2, 0xAE3},     {0xAFA, 0xAFF},     {0xB01, 0xB01},
    {0xB3C, 0xB3C},     {0xB3F, 0xB3F},     {0xB41, 0xB44},     {0xB4D, 0xB4D},     {0xB55, 0xB56},
    {0xB62, 0xB63},     {0xB82, 0xB82},     {0xBC0, 0xBC0},     {0xBCD, 0xBCD},     {0xC00, 0xC00},
    {0xC04, 0xC04},     {0xC3C, 0xC3C},     {0xC3E, 0xC40},     {0xC46, 0xC48},     {0xC4A, 0xC4D},
    {0xC55, 0xC56},     {0xC62, 0xC63},     {0xC81, 0xC81},     {0xCBC, 0xCBC},     {0xCBF, 0xCBF},
    {0xCC6, 0xCC6},     {0xCCC, 0xCCD},     {0xCE2, 0xCE3},     {0xD00, 0xD01},     {0xD3B, 0xD3C},
    {0xD41, 0xD44},     {0xD4D, 0xD4D},     {0xD62, 0xD63},     {0xD81, 0xD81},     {0xDCA, 0xDCA},
    {0xDD2, 0xDD4},     {0xDD6, 0xDD6},     {0xE31, 0xE31},     {0xE34, 0xE3A},     {0xE46, 0xE4E},
    {0xEB1, 0xEB1},     {0xEB4, 0xEBC},     {0xEC6, 0xEC6},     {0xEC8, 0xECD},     {0xF18, 0xF19},
    {0xF35, 0xF35},     {0xF37, 0xF37},     {0xF39, 0xF39},     {0xF71, 0xF7E},     {0xF80, 0xF84},
    {0xF86, 0xF87},     {0xF8D, 0xF97},     {0xF99, 0xFBC},     {0xFC6, 0xFC6},     {0x102D, 0x1030},
    {0x1032, 0x1037},   {0x1039, 0x103A},   {0x103D, 0x103E},   {0x1058, 0x1059},   {0x105E, 0x1060},
    {0x1071, 0x1074},   {0x1082, 0x1082},   {0x1085, 0x1086},   {0x108D, 0x108D},   {0x109D, 0x109D},
    {0x10FC, 0x10FC},   {0x135D, 0x135F},   {0x1712, 0x1714},   {0x1732, 0x1733},   {0x1752, 0x1753},
    {0x1772, 0x1773},   {0x17B4, 0x17B5},   {0x17B7, 0x17BD},   {0x17C6, 0x17C6},   {0x17C9, 0x17D3},
    {0x17D7, 0x17D7},   {0x17DD, 0x17DD},   {0x180B, 0x180F},   {0x1843, 0x1843},   {0x1885, 0x1886},
    {0x18A9, 0x18A9},   {0x1920, 0x1922},   {0x1927, 0x1928},   {0x1932, 0x1932},   {0x1939, 0x193B},
    {0x1A17, 0x1A18},   {0x1A1B, 0x1A1B},   {0x1A56, 0x1A56},   {0x1A58, 0x1A5E},   {0x1A60, 0x1A60},
    {0x1A62, 0x1A62},   {0x1A65, 0x1A6C},   {0x1A73, 0x1A7C},   {0x1A7F, 0x1A7F},   {0x1AA7, 0x1AA7},
    {0x1AB0, 0x1ACE},   {0x1B00, 0x1B03},   {0x1B34, 0x1B34},   {0x1B36, 0x1B3A},   {0x1B3C, 0x1B3C},
    {0x1B42, 0x1B42},   {0x1B6B, 0x1B73},   {0x1B80, 0x1B81},   {0x1BA2, 0x1BA5},   {0x1BA8, 0x1BA9},
    {0x1BAB, 0x1BAD},   {0x1BE6, 0x1BE6},   {0x1BE8, 0x1BE9},   {0x1BED, 0x1BED},   {0x1BEF, 0x1BF1},
    {0x1C2C, 0x1C33},   {0x1C36, 0x1C37},   {0x1C78, 0x1C7D},   {0x1CD0, 0x1CD2},   {0x1CD4, 0x1CE0},
    {0x1CE2, 0x1CE8},   {0x1CED, 0x1CED},   {0x1CF4, 0x1CF4},   {0x1CF8, 0x1CF9},   {0x1D2C, 0x1D6A},
    {0x1D78, 0x1D78},   {0x1D9B, 0x1DFF},   {0x1FBD, 0x1FBD},   {0x1FBF, 0x1FC1},   {0x1FCD, 0x1FCF},
    {0x1FDD, 0x1FDF},   {0x1FED, 0x1FEF},   {0x1FFD, 0x1FFE},   {0x200B, 0x200F},   {0x2018, 0x2019},
    {0x2024, 0x2024},   {0x2027, 0x2027},   {0x202A, 0x202E},   {0x2060, 0x2064},   {0x2066, 0x206F},
    {0x2071, 0x2071},   {0x207F, 0x207F},   {0x2090, 0x209C},   {0x20D0, 0x20F0},   {0x2C7C, 0x2C7D},
    {0x2CEF, 0x2CF1},   {0x2D6F, 0x2D6F},   {0x2D7F, 0x2D7F},   {0x2DE0, 0x2DFF},   {0x2E2F, 0x2E2F},
    {0x3005, 0x3005},   {0x302A, 0x302D},   {0x3031, 0x3035},   {0x303B, 0x303B},   {0x3099, 0x309E},
    {0x30FC, 0x30FE},   {0xA015, 0xA015},   {0xA4F8, 0xA4FD},   {0xA60C, 0xA60C},   {0xA66F, 0xA672},
    {0xA674, 0xA67D},   {0xA67F, 0xA67F},   {0xA69C, 0xA69F},   {0xA6F0, 0xA6F1},   {0xA700, 0xA721},
    {0xA770, 0xA770},   {0xA788, 0xA78A},   {0xA7F2, 0xA7F4},   {0xA7F8, 0xA7F9},   {0xA802, 0xA802},
    {0xA806, 0xA806},   {0xA80B, 0xA80B},   {0xA825, 0xA826},   {0xA82C, 0xA82C},   {0xA8C4, 0xA8C5},
    {0xA8E0, 0xA8F1},   {0xA8FF, 0xA8FF},   {0xA926, 0xA92D},   {0xA947, 0xA951},   {0xA980, 0xA982},
    {0xA9B3, 0xA9B3},   {0xA9B6, 0xA9B9},   {0xA9BC, 0xA9BD},   {0xA9CF, 0xA9CF},   {0xA9E5, 0xA9E6},
    {0xAA29, 0xAA2E},   {0xAA31, 0xAA32},   {0xAA35, 0xAA36},   {0xAA43, 0xAA43},   {0xAA4C, 0xAA4C},
    {0xAA70, 0xAA70},   {0xAA7C, 0xAA7C},   {0xAAB0, 0xAAB0},   {0xAAB2, 0xAAB4},   {0xAAB7, 0xAAB8},
    {0xAABE, 0xAABF},   {0xAAC1, 0xAAC1},   {0xAADD, 0xAADD},   {0xAAEC, 0xAAED},   {0xAAF3, 0xAAF4},
    {0xAAF6, 0xAAF6},   {0xAB5B, 0xAB5F},   {0xAB69, 0xAB6B},   {0xABE5, 0xABE5},   {0xABE8, 0xABE8},
    {0xABED, 0xABED},   {0xFB1E, 0xFB1E},   {0xFBB2, 0xFBC2},   {0xFE00, 0xFE0F},   {0xFE13, 0xFE13},
    {0xFE20, 0xFE2F},   {0xFE52, 0xFE52},   {0xFE55, 0xFE55},   {0xFEFF, 0xFEFF},   {0xFF07, 0xFF07},
    {0xFF0E, 0xFF0E},   {0xFF1A, 0xFF1A},   {0xFF3E, 0xFF3E},   {0xFF40, 0xFF40},   {0xFF70, 0xFF70},
    {0xFF9E, 0xFF9F},   {0xFFE3, 0xFFE3},   {0xFFF9, 0xFFFB},   {0x101FD, 0x101FD}, {0x102E0, 0x102E0},
    {0x10376, 0x1037A}, {0x10780, 0x10785}, {0x10787, 0x107B0}, {0x107B2, 0x107BA}, {0x10A01, 0x10A03},
    {0x10A05, 0x10A06}, {0x10A0C, 0x10A0F}, {0x10A38, 0x10A3A}, {0x10A3F, 0x10A3F}, {0x10AE5, 0x10AE6},
    {0x10D24, 0x10D27}, {0x10EAB, 0x10EAC}, {0x10F46, 0x10F50}, {0x10F82, 0x10F85}, {0x11001, 0x11001},
    {0x11038, 0x11046}, {0x11070, 0x11070}, {0x11073, 0x11074}, {0x1107F, 0x11081}, {0x110B3, 0x110B6},
    {0x110B9, 0x110BA}, {0x110BD, 0x110BD}, {0x110C2, 0x110C2}, {0x110CD, 0x110CD}, {0x11100, 0x11102},
    {0x11127, 0x1112B}, {0x1112D, 0x11134}, {0x11173, 0x11173}, {0x11180, 0x11181}, {0x111B6, 0x111BE},
    {0x111C9, 0x111CC}, {0x111CF, 0x111CF}, {0x1122F, 0x11231}, {0x11234, 0x11234}, {0x11236, 0x11237},
    {0x1123E, 0x1123E}, {0x112DF, 0x112DF}, {0x112E3, 0x112EA}, {0x11300, 0x11301}, {0x1133B, 0x1133C},
    {0x11340, 0x11340}, {0x11366, 0x1136C}, {0x11370, 0x11374}, {0x11438, 0x1143F}, {0x11442, 0x11444},
    {0x11446, 0x11446}, {0x1145E, 0x1145E}, {0x114B3, 0x114B8}, {0x114BA, 0x114BA}, {0x114BF, 0x114C0},
    {0x114C2, 0x114C3}, {0x115B2, 0x115B5}, {0x115BC, 0x115BD}, {0x115BF, 0x115C0}, {0x115DC, 0x115DD},
    {0x11633, 0x1163A}, {0x1163D, 0x1163D}, {0x1163F, 0x11640}, {0x116AB, 0x116AB}, {0x116AD, 0x116AD},
    {0x116B0, 0x116B5}, {0x116B7, 0x116B7}, {0x1171D, 0x1171F}, {0x11722, 0x11725}, {0x11727, 0x1172B},
    {0x1182F, 0x11837}, {0x11839, 0x1183A}, {0x1193B, 0x1193C}, {0x1193E, 0x1193E}, {0x11943, 0x11943},
    {0x119D4, 0x119D7}, {0x119DA, 0x119DB}, {0x119E0, 0x119E0}, {0x11A01, 0x11A0A}, {0x11A33, 0x11A38},
    {0x11A3B, 0x11A3E}, {0x11A47, 0x11A47}, {0x11A51, 0x11A56}, {0x11A59, 0x11A5B}, {0x11A8A, 0x11A96},
    {0x11A98, 0x11A99}, {0x11C30, 0x11C36}, {0x11C38, 0x11C3D}, {0x11C3F, 0x11C3F}, {0x11C92, 0x11CA7},
    {0x11CAA, 0x11CB0}, {0x11CB2, 0x11CB3}, {0x11CB5, 0x11CB6}, {0x11D31, 0x11D36}, {0x11D3A, 0x11D3A},
    {0x11D3C, 0x11D3D}, {0x11D3F, 0x11D45}, {0x11D47, 0x11D47}, {0x11D90, 0x11D91}, {0x11D95, 0x11D95},
    {0x11D97, 0x11D97}, {0x11EF3, 0x11EF4}, {0x13430, 0x13438}, {0x16AF0, 0x16AF4}, {0x16B30, 0x16B36},
    {0x16B40, 0x16B43}, {0x16F4F, 0x16F4F}, {0x16F8F, 0x16F9F}, {0x16FE0, 0x16FE1}, {0x16FE3, 0x16FE4},
    {0x1AFF0, 0x1AFF3}, {0x1AFF5, 0x1AFFB}, {0x1AFFD, 0x1AFFE}, {0x1BC9D, 0x1BC9E}, {0x1BCA0, 0x1BCA3},
    {0x1CF00, 0x1CF2D}, {0x1CF30, 0x1CF46}, {0x1D167, 0x1D169}, {0x1D173, 0x1D182}, {0x1D185, 0x1D18B},
    {0x1D1AA, 0x1D1AD}, {0x1D242, 0x1D244}, {0x1DA00, 0x1DA36}, {0x1DA3B, 0x1DA6C}, {0x1DA75, 0x1DA75},
    {0x1DA84, 0x1DA84}, {0x1DA9B, 0x1DA9F}, {0x1DAA1, 0x1DAAF}, {0x1E000, 0x1E006}, {0x1E008, 0x1E018},
    {0x1E01B, 0x1E021}, {0x1E023, 0x1E024}, {0x1E026, 0x1E02A}, {0x1E130, 0x1E13D}, {0x1E2AE, 0x1E2AE},
    {0x1E2EC, 0x1E2EF}, {0x1E8D0, 0x1E8D6}, {0x1E944, 0x1E94B}, {0x1F3FB, 0x1F3FF}, {0xE0001, 0xE0001},
    {0xE0020, 0xE007F}, {0xE0100, 0xE01EF}};

bool in_ranges(std::span<const CodeRange> ranges, uint32_t cpt) {
  const auto found = std::upper_bound(ranges.begin(), ranges.end(), cpt,
                                      [](uint32_t value, const CodeRange& range) { return value < range.first; });
  return found != ranges.begin() && cpt <= std::prev(found)->last;
}
bool is_cased(uint32_t cpt) {
  return in_ranges(kCasedRanges, cpt);
}
bool is_case_ignorable(uint32_t cpt) {
  return in_ranges(kCaseIgnorableRanges, cpt);
}

// Python's str.lower(): the simple lower-case mappings (llama.cpp's table equals Python's for every
// code point Unicode 14 assigns), U+0130 -> "i\u0307" (its one multi-character mapping), and the
// final sigma.
Cpts lower(const Cpts& text) {
  Cpts out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size(); ++i) {
    const uint32_t cpt = text[i];
    if (is_escaped_byte(cpt)) {
      out.push_back(cpt);
    } else if (cpt == 0x130) {
      out.push_back('i');
      out.push_back(0x307);
    } else if (cpt == 0x3A3) {
      size_t j = i;
      while (j > 0 && is_case_ignorable(text[j - 1]))
        --j;
      bool final_sigma = j > 0 && is_cased(text[j - 1]);
      if (final_sigma) {
        j = i + 1;
        while (j < text.size() && is_case_ignorable(text[j]))
          ++j;
        final_sigma = j == text.size() || !is_cased(text[j]);
      }
      out.push_back(final_sigma ? 0x3C2 : 0x3C3);
    } else {
      out.push_back(unicode_tolower(cpt));
    }
  }
  return out;
}

bool starts_with(const Cpts& text, size_t at, std::string_view ascii) {
  if (text.size() - at < ascii.size()) return false;
  for (size_t i = 0; i < ascii.size(); ++i)
    if (text[at + i] != static_cast<uint8_t>(ascii[i])) return false;
  return true;
}

// ---- files ----

std::string read_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(fmt::format("cannot open '{}'", path.string()));
  std::ostringstream content;
  content << in.rdbuf();
  if (in.bad()) throw std::runtime_error(fmt::format("cannot read '{}'", path.string()));
  return std::move(content).str();
}

nlohmann::json read_json(const std::filesystem::path& path) {
  auto json = nlohmann::json::parse(read_file(path), nullptr, false);
  if (json.is_discarded() || !json.is_object())
    throw std::runtime_error(fmt::format("'{}' is not a JSON object", path.string()));
  return json;
}

// A special token's text from tokenizer_config.json / special_tokens_map.json: a string, or an
// AddedToken object with "content".
void read_special_token(const nlohmann::json& config, const char* key, const std::filesystem::path& path,
                        std::string& token) {
  const auto found = config.find(key);
  if (found == config.end() || found->is_null()) return;
  if (found->is_string()) {
    token = found->get<std::string>();
  } else if (found->is_object() && found->contains("content") && (*found)["content"].is_string()) {
    token = (*found)["content"].get<std::string>();
  } else {
    throw std::runtime_error(fmt::format("'{}': \"{}\" is neither a string nor a token object", path.string(), key));
  }
}

} // namespace

ClipTokenizer::ClipTokenizer(const std::filesystem::path& tokenizer_dir) {
  // bytes_to_unicode(): printable Latin-1 bytes map to themselves, the rest to U+0100.. in order.
  for (int b = 0, extra = 0; b < 256; ++b) {
    const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    append_utf8(byte_symbols_[b], printable ? static_cast<uint32_t>(b) : static_cast<uint32_t>(256 + extra++));
  }

  const auto vocab_path = tokenizer_dir / "vocab.json";
  const auto vocab = read_json(vocab_path);
  encoder_.reserve(vocab.size());
  for (const auto& [token, id] : vocab.items()) {
    if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() > INT32_MAX)
      throw std::runtime_error(fmt::format("'{}': token '{}' has no valid id", vocab_path.string(), token));
    encoder_.emplace(token, id.get<int>());
  }
  if (encoder_.empty()) throw std::runtime_error(fmt::format("'{}' has no tokens", vocab_path.string()));

  // merges.txt: "#version: ..." then "first second" per line, the line order being the rank (a
  // repeated pair keeps its last rank, as Python's dict does).
  const auto merges_path = tokenizer_dir / "merges.txt";
  std::istringstream merges(read_file(merges_path));
  std::string line;
  int line_number = 0, rank = 0;
  while (std::getline(merges, line)) {
    ++line_number;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line_number == 1 && line.starts_with("#version")) continue;
    if (line.find_first_not_of(" \t") == std::string::npos) continue;
    std::istringstream fields(line);
    std::string first, second, extra;
    if (!(fields >> first >> second) || (fields >> extra)) {
      throw std::runtime_error(
          fmt::format("'{}' line {}: expected two symbols, found '{}'", merges_path.string(), line_number, line));
    }
    ranks_.insert_or_assign(first + ' ' + second, rank++);
  }

  std::string bos(kStartOfText), eos(kEndOfText), unk(kEndOfText), pad(kEndOfText);
  for (const char* name : {"tokenizer_config.json", "special_tokens_map.json"}) { // the latter wins
    const auto path = tokenizer_dir / name;
    if (!std::filesystem::exists(path)) continue;
    const auto config = read_json(path);
    read_special_token(config, "bos_token", path, bos);
    read_special_token(config, "eos_token", path, eos);
    read_special_token(config, "unk_token", path, unk);
    read_special_token(config, "pad_token", path, pad);
  }
  const auto special_id = [&](const std::string& token, const char* what) {
    const auto found = encoder_.find(token);
    if (found == encoder_.end()) {
      throw std::runtime_error(
          fmt::format("'{}': the {} token '{}' is not in the vocabulary", vocab_path.string(), what, token));
    }
    return found->second;
  };
  bos_id_ = special_id(bos, "bos");
  eos_id_ = special_id(eos, "eos");
  unk_id_ = special_id(unk, "unk");
  pad_id_ = special_id(pad, "pad");
}

int ClipTokenizer::token_id(const std::string& token) const {
  const auto found = encoder_.find(token);
  return found == encoder_.end() ? unk_id_ : found->second;
}

int ClipTokenizer::rank(const std::string& first, const std::string& second, std::string& scratch) const {
  scratch.assign(first).append(1, ' ').append(second);
  const auto found = ranks_.find(scratch);
  return found == ranks_.end() ? -1 : found->second;
}

// CLIP's bpe(): repeatedly merge the lowest-ranked adjacent pair, every non-overlapping occurrence
// from left to right, until no pair has a rank. Done with a queue ordered by (rank, position), which
// merges in the same order without rescanning the word (O(n log n) rather than O(n^2)).
std::vector<int> ClipTokenizer::bpe(const std::string& word) const {
  struct Symbol {
    std::string text;
    int prev, next;
    int version = 0;
    bool alive = true;
  };
  std::vector<Symbol> symbols;
  symbols.reserve(word.size());
  for (size_t i = 0; i < word.size(); ++i)
    symbols.push_back({byte_symbols_[static_cast<uint8_t>(word[i])], static_cast<int>(i) - 1, static_cast<int>(i) + 1});
  if (symbols.empty()) return {};
  symbols.back().text += "</w>";
  symbols.back().next = -1;

  struct Candidate {
    int rank, left, right, left_version, right_version;
    bool operator>(const Candidate& other) const { return rank != other.rank ? rank > other.rank : left > other.left; }
  };
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<>> queue;
  std::string scratch;
  const auto consider = [&](int left, int right) {
    if (left < 0 || right < 0) return;
    const int r = rank(symbols[left].text, symbols[right].text, scratch);
    if (r >= 0) queue.push({r, left, right, symbols[left].version, symbols[right].version});
  };
  for (int i = 0; i + 1 < static_cast<int>(symbols.size()); ++i)
    consider(i, i + 1);

  while (!queue.empty()) {
    const Candidate top = queue.top();
    queue.pop();
    Symbol& left = symbols[top.left];
    Symbol& right = symbols[top.right];
    if (!left.alive || !right.alive || left.next != top.right || left.version != top.left_version ||
        right.version != top.right_version) {
      continue; // stale: one side was merged since
    }
    left.text += right.text;
    ++left.version;
    right.alive = false;
    left.next = right.next;
    if (right.next >= 0) symbols[right.next].prev = top.left;
    consider(left.prev, top.left);
    consider(top.left, left.next);
  }

  std::vector<int> ids;
  for (int i = 0; i >= 0; i = symbols[i].next)
    ids.push_back(token_id(symbols[i].text));
  return ids;
}

std::vector<int> ClipTokenizer::encode(std::string_view text) const {
  // basic_clean (html.unescape twice, strip), whitespace_clean, lower.
  const Cpts cleaned = lower(whitespace_clean(html_unescape(html_unescape(decode_utf8(text)))));

  std::vector<int> ids;
  std::string word;
  const auto emit_word = [&](size_t begin, size_t end) {
    word.clear();
    for (size_t i = begin; i < end; ++i)
      append_utf8(word, cleaned[i]);
    const bool cacheable = word.size() <= kMaxCachedWordBytes;
    if (cacheable) {
      std::lock_guard lock(cache_mutex_);
      if (const auto found = cache_.find(word); found != cache_.end()) {
        ids.insert(ids.end(), found->second.begin(), found->second.end());
        return;
      }
    }
    std::vector<int> word_ids = bpe(word);
    ids.insert(ids.end(), word_ids.begin(), word_ids.end());
    if (cacheable) {
      std::lock_guard lock(cache_mutex_);
      if (cache_.size() >= kMaxCacheEntries) cache_.clear();
      cache_.emplace(word, std::move(word_ids));
    }
  };

  // findall() of CLIP's pattern; what no alternative matches (whitespace) is skipped.
  static constexpr std::string_view kContractions[] = {"s", "t", "re", "ve", "m", "ll", "d"};
  const size_t n = cleaned.size();
  size_t i = 0;
  while (i < n) {
    if (starts_with(cleaned, i, kStartOfText)) {
      ids.push_back(token_id(std::string(kStartOfText)));
      i += kStartOfText.size();
      continue;
    }
    if (starts_with(cleaned, i, kEndOfText)) {
      ids.push_back(token_id(std::string(kEndOfText)));
      i += kEndOfText.size();
      continue;
    }
    const uint32_t cpt = cleaned[i];
    if (cpt == '\'') {
      const auto tail = std::find_if(std::begin(kContractions), std::end(kContractions),
                                     [&](std::string_view c) { return starts_with(cleaned, i + 1, c); });
      if (tail != std::end(kContractions)) {
        emit_word(i, i + 1 + tail->size());
        i += 1 + tail->size();
        continue;
      }
    }
    size_t j = i + 1;
    if (is_letter(cpt)) {
      while (j < n && is_letter(cleaned[j]))
        ++j;
    } else if (is_number(cpt)) {
      // a single digit
    } else if (is_space(cpt)) {
      ++i;
      continue;
    } else {
      while (j < n && !is_space(cleaned[j]) && !is_letter(cleaned[j]) && !is_number(cleaned[j]))
        ++j;
    }
    emit_word(i, j);
    i = j;
  }
  return ids;
}

std::vector<std::vector<int>> ClipTokenizer::encode_chunks(std::string_view text) const {
  const std::vector<int> ids = encode(text);
  std::vector<std::vector<int>> chunks;
  size_t position = 0;
  do {
    const size_t count = std::min<size_t>(kIdsPerChunk, ids.size() - position);
    std::vector<int> chunk;
    chunk.reserve(kChunkLength);
    chunk.push_back(bos_id_);
    chunk.insert(chunk.end(), ids.begin() + static_cast<std::ptrdiff_t>(position),
                 ids.begin() + static_cast<std::ptrdiff_t>(position + count));
    chunk.push_back(eos_id_);
    chunk.resize(kChunkLength, pad_id_);
    chunks.push_back(std::move(chunk));
    position += count;
  } while (position < ids.size());
  return chunks;
}

} // namespace mmserve::diffusion
