#include "core/text.hpp"

#include <gtest/gtest.h>

namespace mmserve::text {
namespace {

TEST(Text, LowersAsciiLettersOnly) {
  EXPECT_EQ(lowered("Content-Type: IMAGE/PNG"), "content-type: image/png");
  // Bytes of UTF-8 sequences and every non-letter stay as they are, whatever the locale.
  EXPECT_EQ(lowered("\xC3\x89T\xC3\x89-@[`{"), "\xC3\x89t\xC3\x89-@[`{");
  EXPECT_EQ(lowered(""), "");
  static_assert(ascii_lower('A') == 'a' && ascii_lower('Z') == 'z' && ascii_lower('@') == '@' &&
                ascii_lower('[') == '[');
}

TEST(Text, ComparesIgnoringAsciiCase) {
  EXPECT_TRUE(iequals("Multipart/Form-Data", "multipart/form-data"));
  EXPECT_TRUE(iequals("", ""));
  EXPECT_FALSE(iequals("multipart/form-dat", "multipart/form-data"));
  EXPECT_FALSE(iequals("a", "b"));
  // '@' and '`' are not the upper and lower case of one letter.
  EXPECT_FALSE(iequals("@", "`"));
}

TEST(Text, TrimsBlanksOrAllWhiteSpace) {
  EXPECT_EQ(trim_blanks(" \t form-data \t"), "form-data");
  EXPECT_EQ(trim_blanks("\r\nvalue\r\n"), "\r\nvalue\r\n"); // only spaces and tabs are HTTP's optional white space
  EXPECT_EQ(trim_blanks("   "), "");
  EXPECT_EQ(trim_space("\r\n\t en \v\f"), "en");
  EXPECT_EQ(trim_space(" a b "), "a b");
  EXPECT_EQ(trim_space(" \n "), "");
  EXPECT_EQ(trim_space(""), "");
}

} // namespace
} // namespace mmserve::text
