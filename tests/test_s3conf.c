/*
 * test_s3conf.c - S3 configuration the way the AWS CLI reads it
 * (sync/s3conf.c, suite "s3conf"): environment variables over profiles,
 * ~/.aws/credentials and ~/.aws/config written to a temporary HOME (or named
 * by AWS_SHARED_CREDENTIALS_FILE / AWS_CONFIG_FILE), region and endpoint
 * precedence, path-style for custom endpoints, TLS switches, the one-line
 * errors that say what to set (and never show a secret), and s3:// URLs.
 *
 * Criterion runs every test in its own process, so the environment changes
 * below do not leak; each test still starts from a scrubbed environment.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "s3.h"
#include "s3_internal.h"
#include "s4kv.h"
#include "util.h"

static const char *VARS[] = {
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3", "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE", "AWS_CA_BUNDLE",
    "AWS_MAX_ATTEMPTS", "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "S4KV_S3_INSECURE_TLS", NULL};

static char *home;

static void setup(void)
{
    for (int i = 0; VARS[i]; i++)
        unsetenv(VARS[i]);
    home = tu_tmpdir("s3conf");
    setenv("HOME", home, 1);
    char p[512];
    snprintf(p, sizeof p, "%s/.aws", home);
    cr_assert(mkdir(p, 0700) == 0);
}

static void teardown(void)
{
    tu_rmtree_free(home);
}

TestSuite(s3conf, .init = setup, .fini = teardown);

static void write_aws(const char *name, const char *text)
{
    char p[512];
    snprintf(p, sizeof p, "%s/.aws/%s", home, name);
    cr_assert(tu_write_file(p, text, strlen(text)) == 0);
}

static const char CREDS[] =
    "# a comment\n"
    "[default]\n"
    "aws_access_key_id = DEFAULTKEY\n"
    "aws_secret_access_key = defaultsecret\n"
    "\n"
    "[prof1]\n"
    "aws_access_key_id=PROF1KEY\n"
    "aws_secret_access_key =  prof1secret  \n"
    "aws_session_token = prof1token\n"
    "; another comment\n"
    "[helper]\n"
    "region = eu-west-3\n";

static const char CONFIG[] =
    "[default]\n"
    "region = eu-central-1\n"
    "\n"
    "[profile   prof1]\n"
    "region = ap-south-1\n"
    "endpoint_url = http://127.0.0.1:9000\n"
    "\n"
    "[profile helper]\n"
    "credential_process = /usr/bin/false\n"
    "\n"
    "[profile svc]\n"
    "aws_access_key_id = SVCKEY\n"
    "aws_secret_access_key = svcsecret\n"
    "services = mine\n"
    "endpoint_url = http://global.example:1\n"
    "s3 =\n"
    "  addressing_style = virtual\n"
    "\n"
    "[services mine]\n"
    "s3 =\n"
    "  endpoint_url = http://s3only.example:9001\n";

Test(s3conf, env_credentials_beat_the_default_profile)
{
    write_aws("credentials", CREDS);
    write_aws("config", CONFIG);
    setenv("AWS_ACCESS_KEY_ID", "ENVKEY", 1);
    setenv("AWS_SECRET_ACCESS_KEY", "envsecret", 1);
    setenv("AWS_SESSION_TOKEN", "envtoken", 1);
    s3_config c;
    char err[512];
    cr_assert_eq(s3_config_from_env(&c, NULL, NULL, err, sizeof err), 0, "%s", err);
    cr_expect_str_eq(c.access_key, "ENVKEY");
    cr_expect_str_eq(c.secret_key, "envsecret");
    cr_expect_str_eq(c.session_token, "envtoken");
    cr_expect_str_eq(c.region, "eu-central-1"); /* [default] in config */
    cr_expect_str_eq(c.endpoint, "https://s3.eu-central-1.amazonaws.com");
    cr_expect_eq(c.path_style, 0);
    cr_expect_eq(c.tls_verify, 1);
    cr_expect_null(c.ca_file);
    cr_expect_eq(c.max_attempts, 3);
    cr_expect_eq(c.max_parallel, 8);
    cr_expect_eq(c.part_size, 8u << 20);
    cr_expect_eq(c.multipart_threshold, 16u << 20);
    s3_config_free(&c);
}

Test(s3conf, default_profile_from_files)
{
    write_aws("credentials", CREDS);
    s3_config c;
    char err[512];
    cr_assert_eq(s3_config_from_env(&c, NULL, NULL, err, sizeof err), 0, "%s", err);
    cr_expect_str_eq(c.access_key, "DEFAULTKEY");
    cr_expect_str_eq(c.secret_key, "defaultsecret");
    cr_expect_null(c.session_token);
    cr_expect_str_eq(c.region, "us-east-1");
    cr_expect_str_eq(c.endpoint, "https://s3.us-east-1.amazonaws.com");
    s3_config_free(&c);
}

Test(s3conf, aws_profile_selects_a_profile_in_both_files)
{
    write_aws("credentials", CREDS);
    write_aws("config", CONFIG);
    setenv("AWS_PROFILE", "prof1", 1);
    s3_config c;
    char err[512];
    cr_assert_eq(s3_config_from_env(&c, NULL, NULL, err, sizeof err), 0, "%s", err);
    cr_expect_str_eq(c.access_key, "PROF1KEY");
    cr_expect_str_eq(c.secret_key, "prof1secret");
    cr_expect_str_eq(c.session_token, "prof1token");
    cr_expect_str_eq(c.region, "ap-south-1");
    cr_expect_str_eq(c.endpoint, "http://127.0.0.1:9000");
    cr_expect_eq(c.path_style, 1, "a custom endpoint is path-style");
    s3_config_free(&c);
}

Test(s3conf, env_credentials_beat_aws_profile_but_not_profile_override)
{
    write_aws("credentials", CREDS);
    write_aws("config", CONFIG);
    setenv("AWS_ACCESS_KEY_ID", "ENVKEY", 1);
    setenv("AWS_SECRET_ACCESS_KEY", "envsecret", 1);
    setenv("AWS_PROFILE", "prof1", 1);
    s3_config c;
    char err[512];
    cr_assert_eq(s3_config_from_env(&c, NULL, NULL, err, sizeof err), 0, "%s", err);
    cr_expect_str_eq(c.access_key, "ENVKEY", "AWS_PROFILE does not hide env credentials");
    cr_expect_str_eq(c.region, "ap-south-1", "but the profile still gives the region");
    s3_config_free(&c);
    cr_assert_eq(s3_config_from_env(&c, "default", NULL, err, sizeof err), 0, "%s", err);
    cr_expect_str_eq(c.access_key, "DEFAULTKEY", "--profile does, as in the AWS CLI");
    s3_config_free(&c);
}

Test(s3conf, file_locations_from_env)
{
    char cp[512], fp[512];
    snprintf(cp, sizeof cp, "%s/elsewhere-creds", home);
    snprintf(fp, sizeof fp, "%s/elsewhere-config", home);
    const char creds[] = "[x]\naws_access_key_id = XKEY\naws_secret_access_key = xsecret\n";
    const char conf[] = "[profile x]\nregion = sa-east-1\n";
    cr_assert(tu_write_file(cp, creds, strlen(creds)) == 0);
    cr_assert(tu_write_file(fp, conf, strlen(conf)) == 0);
    write_aws("credentials", CREDS); /* must be ignored */
    setenv("AWS_SHARED_CREDENTIALS_FILE", cp, 1);
    setenv("AWS_CONFIG_FILE", fp, 1);
    s3_config c;
    char err[512];
    cr_assert_eq(s3_config_from_env(&c, "x", NULL, err, sizeof err), 0, "%s", err);
    cr_expect_str_eq(c.access_key, "XKEY");
    cr_expect_str_eq(c.region, "sa-east-1");
    s3_config_free(&c);
}

Test(s3conf, region_precedence)
{
    write_aws("credentials", CREDS);
    write_aws("config", CONFIG);
    s3_config c;
    char err[512];
    setenv("AWS_DEFAULT_REGION", "us-west-1", 1);
    cr_assert_eq(s3_config_from_env(&c, NULL, NULL, err, sizeof err), 0, "%s", err);
    cr_expect_str_eq(c.region, "us-west-1");
    s3_config_free(&c);
    setenv("AWS_REGION", "us-west-2", 1);
    cr_assert_eq(s3_config_from_env(&c, NULL, NULL, err, sizeof err), 0, "%s", err);
    cr_expect_str_eq(c.region, "us-west-2");
    cr_expect_str_eq(c.endpoint, "https://s3.us-west-2.amazonaws.com");
    s3_config_free(&c);
    setenv("AWS_REGION", "cn-north-1", 1);
    cr_assert_eq(s3_config_from_env(&c, NULL, NULL, err, sizeof err), 0, "%s", err);
    cr_expect_str_eq(c.endpoint, "https://s3.cn-north-1.amazonaws.com.cn");
    s3_config_free(&c);
    setenv("AWS_REGION", "us-east-1/../x", 1);
    cr_expect_eq(s3_config_from_env(&c, NULL, NULL, err, sizeof err), S4KV_EINVAL);
    cr_expect(strstr(err, "AWS_REGION"), "%s", err);
}

Test(s3conf, endpoint_precedence)
{
    write_aws("config", CONFIG);
    setenv("AWS_PROFILE", "svc", 1);
    s3_config c;
    char err[512];
    /* services section beats the profile's endpoint_url ... */
    cr_assert_eq(s3_config_from_env(&c, NULL, NULL, err, sizeof err), 0, "%s", err);
    cr_expect_str_eq(c.access_key, "SVCKEY", "credentials from the config file");
    cr_expect_str_eq(c.endpoint, "http://s3only.example:9001");
    cr_expect_eq(c.path_style, 0, "s3 = / addressing_style = virtual");
    s3_config_free(&c);
    /* ... the global env var beats both ... */
    setenv("AWS_ENDPOINT_URL", "http://global-env.example:2/", 1);
    cr_assert_eq(s3_config_from_env(&c, NULL, NULL, err, sizeof err), 0, "%s", err);
    cr_expect_str_eq(c.endpoint, "http://global-env.example:2");
    s3_config_free(&c);
    /* ... the S3 one beats it ... */
    setenv("AWS_ENDPOINT_URL_S3", "https://s3-env.example", 1);
    cr_assert_eq(s3_config_from_env(&c, NULL, NULL, err, sizeof err), 0, "%s", err);
    cr_expect_str_eq(c.endpoint, "https://s3-env.example");
    s3_config_free(&c);
    /* ... and the override beats everything */
    cr_assert_eq(s3_config_from_env(&c, NULL, "http://[::1]:4568", err, sizeof err), 0, "%s",
                 err);
    cr_expect_str_eq(c.endpoint, "http://[::1]:4568");
    s3_config_free(&c);
    /* AWS_IGNORE_CONFIGURED_ENDPOINT_URLS drops all but the override */
    setenv("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "true", 1);
    cr_assert_eq(s3_config_from_env(&c, NULL, NULL, err, sizeof err), 0, "%s", err);
    cr_expect_str_eq(c.endpoint, "https://s3.us-east-1.amazonaws.com");
    s3_config_free(&c);
}

Test(s3conf, custom_endpoint_is_path_style)
{
    setenv("AWS_ACCESS_KEY_ID", "K", 1);
    setenv("AWS_SECRET_ACCESS_KEY", "S", 1);
    setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:4568", 1);
    s3_config c;
    char err[512];
    cr_assert_eq(s3_config_from_env(&c, NULL, NULL, err, sizeof err), 0, "%s", err);
    cr_expect_eq(c.path_style, 1);
    cr_expect_str_eq(c.endpoint, "http://127.0.0.1:4568");
    s3_config_free(&c);
}

Test(s3conf, unknown_profile_says_what_to_set)
{
    write_aws("credentials", CREDS);
    setenv("AWS_PROFILE", "nope", 1);
    setenv("AWS_ACCESS_KEY_ID", "ENVKEY", 1);
    setenv("AWS_SECRET_ACCESS_KEY", "envsecret-DO-NOT-PRINT", 1);
    s3_config c;
    char err[512] = "";
    cr_assert_eq(s3_config_from_env(&c, NULL, NULL, err, sizeof err), S4KV_EINVAL);
    cr_expect(strstr(err, "profile 'nope'") && strstr(err, "not found"), "%s", err);
    cr_expect(strstr(err, "AWS_PROFILE"), "names where the profile came from: %s", err);
    cr_expect(strstr(err, ".aws/credentials") && strstr(err, ".aws/config"), "%s", err);
    cr_expect_null(strchr(err, '\n'), "one line: %s", err);
    cr_expect_null(strstr(err, "DO-NOT-PRINT"));
    cr_expect_null(c.access_key, "freed on error");

    err[0] = 0;
    cr_assert_eq(s3_config_from_env(&c, "ghost", NULL, err, sizeof err), S4KV_EINVAL);
    cr_expect(strstr(err, "profile 'ghost'") && strstr(err, "--profile"), "%s", err);
}

Test(s3conf, missing_credentials_say_what_to_set)
{
    s3_config c;
    char err[512] = "";
    cr_assert_eq(s3_config_from_env(&c, NULL, NULL, err, sizeof err), S4KV_EINVAL);
    cr_expect(strstr(err, "AWS_ACCESS_KEY_ID") && strstr(err, "AWS_SECRET_ACCESS_KEY") &&
                  strstr(err, "AWS_PROFILE"), "%s", err);
    cr_expect_null(strchr(err, '\n'), "one line: %s", err);

    setenv("AWS_ACCESS_KEY_ID", "ONLYKEY", 1);
    cr_assert_eq(s3_config_from_env(&c, NULL, NULL, err, sizeof err), S4KV_EINVAL);
    cr_expect(strstr(err, "AWS_SECRET_ACCESS_KEY is not"), "%s", err);
    unsetenv("AWS_ACCESS_KEY_ID");
    setenv("AWS_SECRET_ACCESS_KEY", "only-secret-DO-NOT-PRINT", 1);
    cr_assert_eq(s3_config_from_env(&c, NULL, NULL, err, sizeof err), S4KV_EINVAL);
    cr_expect(strstr(err, "AWS_ACCESS_KEY_ID is not"), "%s", err);
    cr_expect_null(strstr(err, "DO-NOT-PRINT"));
    unsetenv("AWS_SECRET_ACCESS_KEY");

    write_aws("credentials", "[default]\naws_access_key_id = HALF\n");
    cr_assert_eq(s3_config_from_env(&c, NULL, NULL, err, sizeof err), S4KV_EINVAL);
    cr_expect(strstr(err, "aws_secret_access_key"), "%s", err);
}

Test(s3conf, unsupported_credential_source_is_named)
{
    write_aws("credentials", CREDS);
    write_aws("config", CONFIG);
    s3_config c;
    char err[512] = "";
    cr_assert_eq(s3_config_from_env(&c, "helper", NULL, err, sizeof err), S4KV_EINVAL);
    cr_expect(strstr(err, "credential_process") && strstr(err, "AWS_ACCESS_KEY_ID"), "%s", err);
}

Test(s3conf, tls_switches)
{
    setenv("AWS_ACCESS_KEY_ID", "K", 1);
    setenv("AWS_SECRET_ACCESS_KEY", "S", 1);
    s3_config c;
    char err[512];
    setenv("S4KV_S3_INSECURE_TLS", "0", 1);
    cr_assert_eq(s3_config_from_env(&c, NULL, NULL, err, sizeof err), 0, "%s", err);
    cr_expect_eq(c.tls_verify, 1, "only a true value turns verification off");
    s3_config_free(&c);
    setenv("S4KV_S3_INSECURE_TLS", "1", 1);
    cr_assert_eq(s3_config_from_env(&c, NULL, NULL, err, sizeof err), 0, "%s", err);
    cr_expect_eq(c.tls_verify, 0);
    s3_config_free(&c);
    char ca[512];
    snprintf(ca, sizeof ca, "%s/ca.pem", home);
    cr_assert(tu_write_file(ca, "x", 1) == 0);
    setenv("AWS_CA_BUNDLE", ca, 1);
    cr_assert_eq(s3_config_from_env(&c, NULL, NULL, err, sizeof err), 0, "%s", err);
    cr_expect_str_eq(c.ca_file, ca);
    s3_config_free(&c);
    setenv("AWS_CA_BUNDLE", "/nonexistent/ca.pem", 1);
    cr_assert_eq(s3_config_from_env(&c, NULL, NULL, err, sizeof err), S4KV_EINVAL);
    cr_expect(strstr(err, "/nonexistent/ca.pem"), "%s", err);
}

Test(s3conf, max_attempts)
{
    setenv("AWS_ACCESS_KEY_ID", "K", 1);
    setenv("AWS_SECRET_ACCESS_KEY", "S", 1);
    s3_config c;
    char err[512];
    setenv("AWS_MAX_ATTEMPTS", "5", 1);
    cr_assert_eq(s3_config_from_env(&c, NULL, NULL, err, sizeof err), 0, "%s", err);
    cr_expect_eq(c.max_attempts, 5);
    s3_config_free(&c);
    setenv("AWS_MAX_ATTEMPTS", "0", 1);
    cr_assert_eq(s3_config_from_env(&c, NULL, NULL, err, sizeof err), S4KV_EINVAL);
    cr_expect(strstr(err, "AWS_MAX_ATTEMPTS"), "%s", err);
}

Test(s3conf, bad_endpoints_are_named)
{
    setenv("AWS_ACCESS_KEY_ID", "K", 1);
    setenv("AWS_SECRET_ACCESS_KEY", "secret-DO-NOT-PRINT", 1);
    const char *bad[] = {"ftp://x", "http://", "http://host/path", "http://host:99999",
                         "http://host:", "127.0.0.1:4568", "http://user:pw@host", "http://[::1"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        setenv("AWS_ENDPOINT_URL_S3", bad[i], 1);
        s3_config c;
        char err[512] = "";
        cr_expect_eq(s3_config_from_env(&c, NULL, NULL, err, sizeof err), S4KV_EINVAL, "%s",
                     bad[i]);
        cr_expect(strstr(err, "AWS_ENDPOINT_URL_S3"), "%s -> %s", bad[i], err);
        cr_expect_null(strstr(err, "DO-NOT-PRINT"));
    }
}

Test(s3conf, endpoint_parse_parts)
{
    s3_endpoint ep;
    char err[256];
    cr_assert_eq(s3_endpoint_parse("HTTP://Example.COM:8080/", "x", &ep, err, sizeof err), 0,
                 "%s", err);
    cr_expect_str_eq(ep.scheme, "http");
    cr_expect_str_eq(ep.host, "example.com");
    cr_expect_str_eq(ep.authority, "Example.COM:8080");
    cr_expect_eq(ep.port, 8080);
    s3_endpoint_free(&ep);
    cr_assert_eq(s3_endpoint_parse("https://[::1]:4568", "x", &ep, err, sizeof err), 0, "%s",
                 err);
    cr_expect_str_eq(ep.host, "::1");
    cr_expect_str_eq(ep.authority, "[::1]:4568");
    s3_endpoint_free(&ep);
}

/* ---- s3:// URLs */

static void url_ok(const char *url, const char *bucket, const char *prefix)
{
    char *b = NULL, *p = NULL, err[256] = "";
    cr_assert_eq(s3_url_parse(url, &b, &p, err, sizeof err), 0, "%s: %s", url, err);
    cr_expect_str_eq(b, bucket, "%s", url);
    cr_expect_str_eq(p, prefix, "%s", url);
    free(b);
    free(p);
}

static void url_bad(const char *url, const char *what)
{
    char *b = (char *)1, *p = (char *)1, err[256] = "";
    cr_expect_eq(s3_url_parse(url, &b, &p, err, sizeof err), S4KV_EINVAL, "%s", url);
    cr_expect_null(b, "%s", url);
    cr_expect_null(p, "%s", url);
    cr_expect(strstr(err, what), "%s -> '%s' (wanted '%s')", url ? url : "NULL", err, what);
}

Test(s3conf, url_parse_good)
{
    url_ok("s3://bucket/db", "bucket", "db/");
    url_ok("s3://bucket/db/", "bucket", "db/");
    url_ok("s3://bucket", "bucket", "");
    url_ok("s3://bucket/", "bucket", "");
    url_ok("s3://my.bucket-1/a/b c/+%?#", "my.bucket-1", "a/b c/+%?#/");
    url_ok("s3://bucket/d\xc3\xa9j\xc3\xa0/", "bucket", "d\xc3\xa9j\xc3\xa0/");
}

Test(s3conf, url_parse_malformed)
{
    url_bad("http://x", "s3://");
    url_bad("S3:/bucket", "s3://");
    url_bad(NULL, "s3://");
    url_bad("", "s3://");
    url_bad("s3://", "no bucket");
    url_bad("s3:///p", "no bucket");
    url_bad("s3://Bad_Bucket/p", "bad bucket name");
    url_bad("s3://ab/p", "bad bucket name");
    url_bad("s3://-abc/p", "bad bucket name");
    url_bad("s3://abc-/p", "bad bucket name");
    url_bad("s3://a..b/p", "bad bucket name");
    url_bad("s3://buck et/p", "bad bucket name");
    url_bad("s3://192.168.1.1/p", "bad bucket name");
    url_bad("s3://bucket/a\nb", "control character");
}
