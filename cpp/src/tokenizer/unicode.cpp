#include "tokenizer/unicode.h"

#include <algorithm>

namespace si::unicode {

namespace {

bool in_ranges(const CodePointRange* ranges, size_t count, uint32_t code_point) {
    const CodePointRange* end = ranges + count;
    // First range whose last code point is not below code_point.
    const CodePointRange* it = std::lower_bound(
        ranges, end, code_point,
        [](const CodePointRange& range, uint32_t cp) { return range.last < cp; });
    return it != end && it->first <= code_point;
}

bool is_continuation(uint8_t byte) { return (byte & 0xC0) == 0x80; }

}  // namespace

DecodedChar decode_utf8(std::string_view text, size_t pos) {
    const DecodedChar invalid{kReplacementCharacter, 1, Utf8Status::invalid};
    const auto byte_at = [&](size_t i) { return static_cast<uint8_t>(text[pos + i]); };
    const uint8_t lead = byte_at(0);
    if (lead < 0x80) return {lead, 1, Utf8Status::valid};

    // Sequence length and the allowed range of the second byte, which is what excludes
    // overlong forms (E0, F0), surrogates (ED) and code points above U+10FFFF (F4).
    uint32_t length = 0;
    uint8_t second_min = 0x80, second_max = 0xBF;
    uint32_t code_point = 0;
    if (lead >= 0xC2 && lead <= 0xDF) {
        length = 2;
        code_point = lead & 0x1F;
    } else if (lead >= 0xE0 && lead <= 0xEF) {
        length = 3;
        code_point = lead & 0x0F;
        if (lead == 0xE0) second_min = 0xA0;
        if (lead == 0xED) second_max = 0x9F;
    } else if (lead >= 0xF0 && lead <= 0xF4) {
        length = 4;
        code_point = lead & 0x07;
        if (lead == 0xF0) second_min = 0x90;
        if (lead == 0xF4) second_max = 0x8F;
    } else {
        return invalid;  // a continuation byte, C0/C1 (always overlong) or F5..FF
    }

    const size_t available = text.size() - pos;
    for (uint32_t i = 1; i < length; ++i) {
        if (i >= available) return {kReplacementCharacter, i, Utf8Status::truncated};
        const uint8_t byte = byte_at(i);
        const bool ok = i == 1 ? (byte >= second_min && byte <= second_max) : is_continuation(byte);
        if (!ok) return invalid;
        code_point = (code_point << 6) | (byte & 0x3F);
    }
    return {code_point, length, Utf8Status::valid};
}

void append_utf8(std::string& out, uint32_t code_point) {
    if ((code_point >= 0xD800 && code_point <= 0xDFFF) || code_point > 0x10FFFF) {
        code_point = kReplacementCharacter;
    }
    if (code_point < 0x80) {
        out += static_cast<char>(code_point);
    } else if (code_point < 0x800) {
        out += static_cast<char>(0xC0 | (code_point >> 6));
        out += static_cast<char>(0x80 | (code_point & 0x3F));
    } else if (code_point < 0x10000) {
        out += static_cast<char>(0xE0 | (code_point >> 12));
        out += static_cast<char>(0x80 | ((code_point >> 6) & 0x3F));
        out += static_cast<char>(0x80 | (code_point & 0x3F));
    } else {
        out += static_cast<char>(0xF0 | (code_point >> 18));
        out += static_cast<char>(0x80 | ((code_point >> 12) & 0x3F));
        out += static_cast<char>(0x80 | ((code_point >> 6) & 0x3F));
        out += static_cast<char>(0x80 | (code_point & 0x3F));
    }
}

std::string sanitize_utf8(std::string_view text) {
    std::string out;
    out.reserve(text.size());
    size_t pos = 0;
    while (pos < text.size()) {
        const DecodedChar ch = decode_utf8(text, pos);
        if (ch.status == Utf8Status::valid) {
            out.append(text.data() + pos, ch.length);
        } else {
            append_utf8(out, kReplacementCharacter);
        }
        pos += ch.length;
    }
    return out;
}

bool is_letter(uint32_t code_point) {
    if (code_point < 0x80) {
        return (code_point | 0x20) >= 'a' && (code_point | 0x20) <= 'z';
    }
    return in_ranges(tables::letter_ranges, tables::letter_ranges_count, code_point);
}

bool is_number(uint32_t code_point) {
    if (code_point < 0x80) return code_point >= '0' && code_point <= '9';
    return in_ranges(tables::number_ranges, tables::number_ranges_count, code_point);
}

bool is_whitespace(uint32_t code_point) {
    // Unicode White_Space (PropList.txt, stable since Unicode 6.3 removed U+180E).
    switch (code_point) {
        case 0x0009: case 0x000A: case 0x000B: case 0x000C: case 0x000D: case 0x0020:
        case 0x0085: case 0x00A0: case 0x1680: case 0x2028: case 0x2029: case 0x202F:
        case 0x205F: case 0x3000:
            return true;
        default:
            return code_point >= 0x2000 && code_point <= 0x200A;
    }
}

}  // namespace si::unicode
