// AWS Signature V4 against AWS's published examples: the SigV4 test suite
// (get-vanilla and its siblings, service "service") and the S3 API
// reference's worked examples (header auth and a presigned URL).
#include "storage/digest.hpp"
#include "storage/s3_client.hpp"
#include "storage/sigv4.hpp"

#include <gtest/gtest.h>

namespace sigv4 = mmserve::storage::sigv4;
using mmserve::storage::sha256_hex;

namespace {

const sigv4::Credentials kSuiteCredentials{"AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", ""};
const sigv4::Scope kSuiteScope{"us-east-1", "service"};
constexpr const char* kSuiteDate = "20150830T123600Z";

const sigv4::Credentials kS3Credentials{"AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", ""};
const sigv4::Scope kS3Scope{"us-east-1", "s3"};
constexpr const char* kS3Date = "20130524T000000Z";
const std::string kEmptyHash = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

std::string suite_authorization(const std::string& method, const std::string& path, sigv4::Pairs query) {
  sigv4::Request request{
      method, path, std::move(query), {{"Host", "example.amazonaws.com"}, {"X-Amz-Date", kSuiteDate}}, kEmptyHash};
  return sigv4::authorization(request, kSuiteCredentials, kSuiteScope, kSuiteDate);
}

std::string suite_expected(const std::string& signature) {
  return "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, "
         "SignedHeaders=host;x-amz-date, Signature=" +
         signature;
}

std::string signature_of(const std::string& authorization) {
  return authorization.substr(authorization.rfind('=') + 1);
}

} // namespace

TEST(SigV4TestSuite, GetVanilla) {
  EXPECT_EQ(suite_authorization("GET", "/", {}),
            suite_expected("5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"));
}

TEST(SigV4TestSuite, QueryKeysAreSorted) {
  EXPECT_EQ(suite_authorization("GET", "/", {{"Param2", "value2"}, {"Param1", "value1"}}),
            suite_expected("b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500"));
}

TEST(SigV4TestSuite, UnreservedCharactersStayUnencoded) {
  const std::string unreserved = "-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
  EXPECT_EQ(suite_authorization("GET", "/", {{unreserved, unreserved}}),
            suite_expected("9c3e54bfcdf0b19771a7f523ee5669cdf59bc7cc0884027167c21bb143a40197"));
}

TEST(SigV4TestSuite, Utf8PathIsPercentEncodedPerByte) {
  EXPECT_EQ(sigv4::uri_encode("/\xE1\x88\xB4", false), "/%E1%88%B4");
  EXPECT_EQ(suite_authorization("GET", sigv4::uri_encode("/\xE1\x88\xB4", false), {}),
            suite_expected("8318018e0b0f223aa2bbf98705b62bb787dc9c0e678f255a891fd03141be5d85"));
}

TEST(SigV4TestSuite, PostVanillaAndPostWithQuery) {
  EXPECT_EQ(suite_authorization("POST", "/", {}),
            suite_expected("5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b"));
  EXPECT_EQ(suite_authorization("POST", "/", {{"Param1", "value1"}}),
            suite_expected("28038455d6de14eafc1f9222cf5aa6f1a96197d7deb8263271d420d138af7f11"));
}

// S3 API reference, "Signature calculations for the Authorization header":
// GET Object with a Range header.
TEST(SigV4S3Examples, GetObject) {
  sigv4::Request request{"GET",
                         "/test.txt",
                         {},
                         {{"Host", "examplebucket.s3.amazonaws.com"},
                          {"Range", "bytes=0-9"},
                          {"x-amz-content-sha256", kEmptyHash},
                          {"x-amz-date", kS3Date}},
                         kEmptyHash};
  std::string signed_headers;
  const std::string canonical = sigv4::canonical_request(request, &signed_headers);
  EXPECT_EQ(canonical, "GET\n/test.txt\n\nhost:examplebucket.s3.amazonaws.com\nrange:bytes=0-9\n"
                       "x-amz-content-sha256:" +
                           kEmptyHash +
                           "\nx-amz-date:20130524T000000Z\n\nhost;range;x-amz-content-sha256;x-amz-date\n" +
                           kEmptyHash);
  EXPECT_EQ(sigv4::string_to_sign(kS3Date, kS3Scope, canonical),
            "AWS4-HMAC-SHA256\n20130524T000000Z\n20130524/us-east-1/s3/aws4_request\n"
            "7344ae5b7ee6c3e7e6b0fe0640412a37625d1fbfff95c48bbb2dc43964946972");
  EXPECT_EQ(sigv4::authorization(request, kS3Credentials, kS3Scope, kS3Date),
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, "
            "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, "
            "Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41");
}

// PUT Object: a key that needs encoding, a body hash, extra signed headers.
TEST(SigV4S3Examples, PutObject) {
  const std::string body = "Welcome to Amazon S3.";
  const std::string hash = sha256_hex(body);
  EXPECT_EQ(hash, "44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072");
  sigv4::Request request{"PUT",
                         sigv4::uri_encode("/test$file.text", false),
                         {},
                         {{"Host", "examplebucket.s3.amazonaws.com"},
                          {"Date", "Fri, 24 May 2013 00:00:00 GMT"},
                          {"x-amz-date", kS3Date},
                          {"x-amz-storage-class", "REDUCED_REDUNDANCY"},
                          {"x-amz-content-sha256", hash}},
                         hash};
  EXPECT_EQ(request.canonical_uri, "/test%24file.text");
  EXPECT_EQ(signature_of(sigv4::authorization(request, kS3Credentials, kS3Scope, kS3Date)),
            "98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd");
}

// GET Bucket (list objects): query parameters in the signature.
TEST(SigV4S3Examples, ListObjects) {
  sigv4::Request request{
      "GET",
      "/",
      {{"prefix", "J"}, {"max-keys", "2"}},
      {{"Host", "examplebucket.s3.amazonaws.com"}, {"x-amz-date", kS3Date}, {"x-amz-content-sha256", kEmptyHash}},
      kEmptyHash};
  EXPECT_EQ(signature_of(sigv4::authorization(request, kS3Credentials, kS3Scope, kS3Date)),
            "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7");
}

// "Authenticating Requests: Using Query Parameters": the presigned GET.
TEST(SigV4S3Examples, PresignedGetThroughTheClient) {
  mmserve::storage::S3Options options;
  options.endpoint = "https://s3.amazonaws.com";
  options.bucket = "examplebucket";
  options.credentials = kS3Credentials;
  mmserve::storage::S3Client client(options);
  std::tm when{};
  when.tm_year = 2013 - 1900;
  when.tm_mon = 4;
  when.tm_mday = 24;
  const auto now = std::chrono::system_clock::from_time_t(timegm(&when));
  EXPECT_EQ(client.presign_get("test.txt", std::chrono::hours(24), now),
            "https://examplebucket.s3.amazonaws.com/test.txt?X-Amz-Algorithm=AWS4-HMAC-SHA256"
            "&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request"
            "&X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host"
            "&X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404");
}

TEST(SigV4, PresignRefusesLifetimesS3Refuses) {
  sigv4::Request request{"GET", "/b/k", {}, {{"host", "h"}}, ""};
  EXPECT_THROW(sigv4::presign(request, kS3Credentials, kS3Scope, kS3Date, std::chrono::seconds(0)),
               std::invalid_argument);
  EXPECT_THROW(sigv4::presign(request, kS3Credentials, kS3Scope, kS3Date, std::chrono::seconds(604801)),
               std::invalid_argument);
}

TEST(SigV4, SessionTokenIsSignedIntoPresignedUrls) {
  sigv4::Credentials temporary = kS3Credentials;
  temporary.session_token = "token/with+chars";
  sigv4::Request request{"GET", "/b/k", {}, {{"host", "h"}}, ""};
  sigv4::presign(request, temporary, kS3Scope, kS3Date, std::chrono::seconds(60));
  EXPECT_NE(sigv4::canonical_query(request.query).find("X-Amz-Security-Token=token%2Fwith%2Bchars"), std::string::npos);
}

TEST(SigV4, HeaderValuesAreTrimmedAndSpacesFolded) {
  sigv4::Request request{"GET", "/", {}, {{"My-Header", "  a   b  "}, {"host", "h"}}, kEmptyHash};
  std::string names;
  EXPECT_NE(sigv4::canonical_request(request, &names).find("my-header:a b\n"), std::string::npos);
  EXPECT_EQ(names, "host;my-header");
}
