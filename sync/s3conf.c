/*
 * s3conf.c - S3 configuration the way the AWS CLI finds it, and s3:// URLs.
 *
 * Owns: s3_config_from_env (environment variables, ~/.aws/credentials and
 * ~/.aws/config), s3_config_free, s3_url_parse, endpoint URL parsing and the
 * bucket-name rule. Sources: AWS SDKs and Tools Reference Guide ("Shared
 * config and credentials files", "Environment variables", "Service-specific
 * endpoints", "Standard credential providers"), the AWS CLI User Guide
 * ("Configuration and credential file settings"), and the S3 User Guide
 * ("Bucket naming rules").
 *
 * Precedence (each first match wins):
 *   profile:     profile_override (--profile), AWS_PROFILE, AWS_DEFAULT_PROFILE, "default"
 *   credentials: AWS_ACCESS_KEY_ID + AWS_SECRET_ACCESS_KEY (+ AWS_SESSION_TOKEN),
 *                unless a profile was given by profile_override (as the CLI's
 *                --profile does); then the profile in the credentials file
 *                ([NAME]), then in the config file ([profile NAME] / [default])
 *   region:      AWS_REGION, AWS_DEFAULT_REGION, profile region, "us-east-1"
 *   endpoint:    endpoint_override, AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL,
 *                the profile's services section (s3 = / endpoint_url =), the
 *                profile's endpoint_url, then https://s3.REGION.amazonaws.com;
 *                AWS_IGNORE_CONFIGURED_ENDPOINT_URLS=true skips all but the
 *                override. A custom endpoint implies path-style addressing
 *                (a profile's s3 = / addressing_style = virtual undoes it).
 *   tls:         verification on unless S4KV_S3_INSECURE_TLS=1 (or true/yes);
 *                ca_file from AWS_CA_BUNDLE, else the profile's ca_bundle
 *   attempts:    AWS_MAX_ATTEMPTS, else the profile's max_attempts, else 3
 * A profile named explicitly (override or AWS_PROFILE) must exist in one of
 * the two files. Invariant: no message ever contains a secret; messages name
 * the variable or file to fix.
 */
#include <ctype.h>
#include <errno.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "s3_internal.h"
#include "s4kv.h"

#define MIB (1024ull * 1024ull)

/* ---- INI files (botocore's dialect: '#'/';' comments, "key = value" or
 * "key: value", keys case-insensitive, an empty value followed by indented
 * lines opens a nested block stored as "parent.child"). */

typedef struct ini_ent {
    char *section; /* normalised: "default", "profile x", "services y" */
    char *key;     /* lower case; NULL marks the section itself */
    char *val;
} ini_ent;

typedef struct ini {
    ini_ent *e;
    size_t n, cap;
    int exists;
} ini;

static void ini_free(ini *f)
{
    for (size_t i = 0; i < f->n; i++) {
        free(f->e[i].section);
        free(f->e[i].key);
        if (f->e[i].val) {
            explicit_bzero(f->e[i].val, strlen(f->e[i].val));
            free(f->e[i].val);
        }
    }
    free(f->e);
    memset(f, 0, sizeof *f);
}

static char *trim(char *s)
{
    while (*s == ' ' || *s == '\t')
        s++;
    size_t n = strlen(s);
    while (n && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\r' || s[n - 1] == '\n'))
        s[--n] = 0;
    return s;
}

static int ini_add(ini *f, const char *section, const char *key, const char *val)
{
    if (f->n == f->cap) {
        size_t nc = f->cap ? f->cap * 2 : 32;
        ini_ent *e = realloc(f->e, nc * sizeof *e);
        if (!e)
            return -1;
        f->e = e;
        f->cap = nc;
    }
    ini_ent *e = &f->e[f->n];
    e->section = strdup(section);
    e->key = key ? strdup(key) : NULL;
    e->val = val ? strdup(val) : NULL;
    if (!e->section || (key && !e->key) || (val && !e->val)) {
        free(e->section);
        free(e->key);
        free(e->val);
        return -1;
    }
    f->n++;
    return 0;
}

/* Loads path. A missing file is not an error (f->exists = 0). */
static int ini_load(ini *f, const char *path, char *err, size_t errlen)
{
    memset(f, 0, sizeof *f);
    FILE *fp = fopen(path, "r");
    if (!fp) {
        if (errno == ENOENT || errno == ENOTDIR)
            return 0;
        if (err)
            snprintf(err, errlen, "cannot read %s: %s", path, strerror(errno));
        return S4KV_EINVAL;
    }
    f->exists = 1;
    char *line = NULL;
    size_t lcap = 0;
    ssize_t got;
    char section[256] = "";
    char parent[128] = ""; /* key with an empty value: opens a nested block */
    int lineno = 0, rc = 0;
    while ((got = getline(&line, &lcap, fp)) >= 0) {
        lineno++;
        int indented = line[0] == ' ' || line[0] == '\t';
        char *s = trim(line);
        if (!*s || *s == '#' || *s == ';')
            continue;
        if (*s == '[') {
            char *end = strchr(s, ']');
            if (!end) {
                if (err)
                    snprintf(err, errlen, "%s line %d: section header without ']'", path,
                             lineno);
                rc = S4KV_EINVAL;
                break;
            }
            *end = 0;
            char *name = trim(s + 1);
            /* "profile   x" -> "profile x" */
            char norm[256];
            size_t o = 0;
            int space = 0;
            for (char *p = name; *p && o + 1 < sizeof norm; p++) {
                if (*p == ' ' || *p == '\t') {
                    space = 1;
                    continue;
                }
                if (space && o) {
                    norm[o++] = ' ';
                    if (o + 1 >= sizeof norm)
                        break;
                }
                space = 0;
                norm[o++] = *p;
            }
            norm[o] = 0;
            snprintf(section, sizeof section, "%s", norm);
            parent[0] = 0;
            if (ini_add(f, section, NULL, NULL)) {
                rc = S4KV_ENOMEM;
                break;
            }
            continue;
        }
        if (!section[0])
            continue; /* a setting before any section: ignored, as botocore does */
        char *eq = strpbrk(s, "=:");
        if (!eq)
            continue; /* not a setting; the CLI would refuse it, we ignore it */
        *eq = 0;
        char *k = trim(s);
        char *v = trim(eq + 1);
        for (char *p = k; *p; p++)
            *p = (char)tolower((unsigned char)*p);
        char full[300];
        if (indented && parent[0]) {
            snprintf(full, sizeof full, "%s.%s", parent, k);
        } else {
            snprintf(full, sizeof full, "%s", k);
            if (!*v)
                snprintf(parent, sizeof parent, "%s", k);
            else
                parent[0] = 0;
        }
        if (ini_add(f, section, full, v)) {
            rc = S4KV_ENOMEM;
            break;
        }
    }
    if (line) {
        explicit_bzero(line, lcap);
        free(line);
    }
    fclose(fp);
    if (rc == S4KV_ENOMEM && err)
        snprintf(err, errlen, "out of memory reading %s", path);
    if (rc)
        ini_free(f);
    return rc;
}

static int ini_has(const ini *f, const char *section)
{
    for (size_t i = 0; i < f->n; i++)
        if (!strcmp(f->e[i].section, section))
            return 1;
    return 0;
}

/* Last value wins, as in configparser. Empty values count as unset. */
static const char *ini_get(const ini *f, const char *section, const char *key)
{
    const char *v = NULL;
    for (size_t i = 0; i < f->n; i++)
        if (f->e[i].key && !strcmp(f->e[i].section, section) && !strcmp(f->e[i].key, key))
            v = f->e[i].val;
    return v && *v ? v : NULL;
}

/* ---- helpers */

static const char *env(const char *name)
{
    const char *v = getenv(name);
    return v && *v ? v : NULL;
}

static int truthy(const char *v)
{
    return v && (!strcmp(v, "1") || !strcasecmp(v, "true") || !strcasecmp(v, "yes") ||
                 !strcasecmp(v, "on"));
}

/* "~/x" -> "$HOME/x"; malloc'd. */
static char *expand_home(const char *p)
{
    if (p[0] != '~' || (p[1] && p[1] != '/'))
        return strdup(p);
    const char *home = env("HOME");
    if (!home) {
        struct passwd *pw = getpwuid(getuid());
        home = pw && pw->pw_dir ? pw->pw_dir : "/";
    }
    size_t n = strlen(home) + strlen(p) + 1;
    char *r = malloc(n);
    if (r)
        snprintf(r, n, "%s%s", home, p + 1);
    return r;
}

static int set_str(char **dst, const char *v)
{
    free(*dst);
    *dst = NULL;
    if (!v)
        return 0;
    *dst = strdup(v);
    return *dst ? 0 : -1;
}

static void free_secret(char **s)
{
    if (*s) {
        explicit_bzero(*s, strlen(*s));
        free(*s);
        *s = NULL;
    }
}

void s3_config_free(s3_config *c)
{
    if (!c)
        return;
    free(c->endpoint);
    free(c->region);
    free_secret(&c->access_key);
    free_secret(&c->secret_key);
    free_secret(&c->session_token);
    free(c->ca_file);
    memset(c, 0, sizeof *c);
}

/* ---- endpoints */

void s3_endpoint_free(s3_endpoint *ep)
{
    free(ep->scheme);
    free(ep->host);
    free(ep->authority);
    memset(ep, 0, sizeof *ep);
}

int s3_endpoint_parse(const char *url, const char *what, s3_endpoint *ep, char *err,
                      size_t errlen)
{
    memset(ep, 0, sizeof *ep);
    const char *rest;
    const char *scheme;
    if (!strncasecmp(url, "https://", 8)) {
        scheme = "https";
        rest = url + 8;
    } else if (!strncasecmp(url, "http://", 7)) {
        scheme = "http";
        rest = url + 7;
    } else {
        if (err)
            snprintf(err, errlen, "%s '%.100s': not an http:// or https:// URL", what, url);
        return S4KV_EINVAL;
    }
    size_t alen = strcspn(rest, "/?#");
    const char *tail = rest + alen;
    if (*tail && strcmp(tail, "/")) {
        if (err)
            snprintf(err, errlen, "%s '%.100s': an endpoint is scheme://host[:port] with no "
                     "path, query or fragment", what, url);
        return S4KV_EINVAL;
    }
    if (memchr(rest, '@', alen)) {
        if (err)
            snprintf(err, errlen, "%s: user information in the endpoint URL is not "
                     "supported (credentials come from AWS_ACCESS_KEY_ID or a profile)", what);
        return S4KV_EINVAL;
    }
    const char *hs = rest, *he;
    const char *portp = NULL;
    if (alen && rest[0] == '[') {
        const char *rb = memchr(rest, ']', alen);
        if (!rb || rb == rest + 1) {
            if (err)
                snprintf(err, errlen, "%s '%.100s': bad IPv6 address", what, url);
            return S4KV_EINVAL;
        }
        hs = rest + 1;
        he = rb;
        if (rb + 1 < rest + alen) {
            if (rb[1] != ':') {
                if (err)
                    snprintf(err, errlen, "%s '%.100s': bad host", what, url);
                return S4KV_EINVAL;
            }
            portp = rb + 2;
        }
    } else {
        const char *colon = memchr(rest, ':', alen);
        he = colon ? colon : rest + alen;
        if (colon)
            portp = colon + 1;
    }
    if (he == hs) {
        if (err)
            snprintf(err, errlen, "%s '%.100s': no host", what, url);
        return S4KV_EINVAL;
    }
    for (const char *p = hs; p < he; p++) {
        unsigned char ch = (unsigned char)*p;
        if (!(isalnum(ch) || ch == '.' || ch == '-' || ch == '_' || (rest[0] == '[' && ch == ':'))) {
            if (err)
                snprintf(err, errlen, "%s '%.100s': bad character in host", what, url);
            return S4KV_EINVAL;
        }
    }
    if (portp) {
        long port = 0;
        const char *p = portp;
        for (; p < rest + alen && isdigit((unsigned char)*p) && port <= 65535; p++)
            port = port * 10 + (*p - '0');
        if (p == portp || p != rest + alen || port < 1 || port > 65535) {
            if (err)
                snprintf(err, errlen, "%s '%.100s': bad port", what, url);
            return S4KV_EINVAL;
        }
        ep->port = (int)port;
    }
    ep->scheme = strdup(scheme);
    ep->host = strndup(hs, (size_t)(he - hs));
    ep->authority = strndup(rest, alen);
    if (!ep->scheme || !ep->host || !ep->authority) {
        s3_endpoint_free(ep);
        if (err)
            snprintf(err, errlen, "out of memory");
        return S4KV_ENOMEM;
    }
    for (char *p = ep->host; *p; p++)
        *p = (char)tolower((unsigned char)*p);
    return 0;
}

/* ---- s3_config_from_env */

static const char *CRED_HELPERS[] = {"credential_process", "role_arn", "sso_session",
                                     "sso_start_url", "web_identity_token_file", NULL};

int s3_config_from_env(s3_config *c, const char *profile_override,
                       const char *endpoint_override, char *err, size_t errlen)
{
    memset(c, 0, sizeof *c);
    ini cred = {0}, conf = {0};
    char *cred_path = NULL, *conf_path = NULL;
    int rc = 0;
    char cfsec[300], crsec[300];

#define FAIL(code, ...)                                                                       \
    do {                                                                                      \
        if (err)                                                                              \
            snprintf(err, errlen, __VA_ARGS__);                                               \
        rc = (code);                                                                          \
        goto out;                                                                             \
    } while (0)
#define OOM()                                                                                 \
    FAIL(S4KV_ENOMEM, "out of memory reading the S3 configuration")

    const char *profile = profile_override && *profile_override ? profile_override : NULL;
    const char *profile_src = "--profile";
    if (!profile && (profile = env("AWS_PROFILE")))
        profile_src = "AWS_PROFILE";
    if (!profile && (profile = env("AWS_DEFAULT_PROFILE")))
        profile_src = "AWS_DEFAULT_PROFILE";
    int explicit_profile = profile != NULL;
    if (!profile)
        profile = "default";

    cred_path = expand_home(env("AWS_SHARED_CREDENTIALS_FILE") ? env("AWS_SHARED_CREDENTIALS_FILE")
                                                               : "~/.aws/credentials");
    conf_path = expand_home(env("AWS_CONFIG_FILE") ? env("AWS_CONFIG_FILE") : "~/.aws/config");
    if (!cred_path || !conf_path)
        OOM();
    if ((rc = ini_load(&cred, cred_path, err, errlen)) ||
        (rc = ini_load(&conf, conf_path, err, errlen)))
        goto out;

    snprintf(crsec, sizeof crsec, "%s", profile);
    if (!strcmp(profile, "default") && !ini_has(&conf, "profile default"))
        snprintf(cfsec, sizeof cfsec, "default");
    else
        snprintf(cfsec, sizeof cfsec, "profile %s", profile);
    int in_cred = ini_has(&cred, crsec), in_conf = ini_has(&conf, cfsec);
    if (explicit_profile && !in_cred && !in_conf)
        FAIL(S4KV_EINVAL, "profile '%s' (from %s) not found in %s or %s: add it there, or "
             "name an existing profile", profile, profile_src, cred_path, conf_path);

    /* Credentials. */
    const char *ak = env("AWS_ACCESS_KEY_ID"), *sk = env("AWS_SECRET_ACCESS_KEY");
    int use_env = !profile_override || !*profile_override;
    if (use_env && (ak || sk)) {
        if (!ak || !sk)
            FAIL(S4KV_EINVAL, "%s is set but %s is not: set both, or unset both to use a "
                 "profile", ak ? "AWS_ACCESS_KEY_ID" : "AWS_SECRET_ACCESS_KEY",
                 ak ? "AWS_SECRET_ACCESS_KEY" : "AWS_ACCESS_KEY_ID");
        if (set_str(&c->access_key, ak) || set_str(&c->secret_key, sk) ||
            set_str(&c->session_token, env("AWS_SESSION_TOKEN")))
            OOM();
    } else {
        const ini *src = NULL;
        const char *sec = NULL, *path = NULL;
        if (ini_get(&cred, crsec, "aws_access_key_id") ||
            ini_get(&cred, crsec, "aws_secret_access_key")) {
            src = &cred;
            sec = crsec;
            path = cred_path;
        } else if (ini_get(&conf, cfsec, "aws_access_key_id") ||
                   ini_get(&conf, cfsec, "aws_secret_access_key")) {
            src = &conf;
            sec = cfsec;
            path = conf_path;
        }
        if (src) {
            const char *pak = ini_get(src, sec, "aws_access_key_id");
            const char *psk = ini_get(src, sec, "aws_secret_access_key");
            if (!pak || !psk)
                FAIL(S4KV_EINVAL, "profile '%s' in %s has %s but not %s: set both", profile,
                     path, pak ? "aws_access_key_id" : "aws_secret_access_key",
                     pak ? "aws_secret_access_key" : "aws_access_key_id");
            if (set_str(&c->access_key, pak) || set_str(&c->secret_key, psk) ||
                set_str(&c->session_token, ini_get(src, sec, "aws_session_token")))
                OOM();
        } else {
            for (int i = 0; CRED_HELPERS[i]; i++)
                if (ini_get(&conf, cfsec, CRED_HELPERS[i]) || ini_get(&cred, crsec, CRED_HELPERS[i]))
                    FAIL(S4KV_EINVAL, "profile '%s' gets its credentials through %s, which s4kv "
                         "does not support: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                         "(and AWS_SESSION_TOKEN), e.g. from `aws configure export-credentials "
                         "--profile %s --format env`", profile, CRED_HELPERS[i], profile);
            FAIL(S4KV_EINVAL, "no S3 credentials: set AWS_ACCESS_KEY_ID and "
                 "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE naming a profile with "
                 "aws_access_key_id and aws_secret_access_key in %s (profile '%s' has none)",
                 cred_path, profile);
        }
    }

    /* Region. */
    const char *region = env("AWS_REGION");
    const char *region_src = "AWS_REGION";
    if (!region && (region = env("AWS_DEFAULT_REGION")))
        region_src = "AWS_DEFAULT_REGION";
    if (!region && (region = ini_get(&conf, cfsec, "region")))
        region_src = conf_path;
    if (!region) {
        region = "us-east-1";
        region_src = "the default";
    }
    if (strlen(region) > 64)
        FAIL(S4KV_EINVAL, "region from %s is too long", region_src);
    for (const char *p = region; *p; p++)
        if (!isalnum((unsigned char)*p) && *p != '-')
            FAIL(S4KV_EINVAL, "region '%s' from %s: only letters, digits and '-' are "
                 "allowed (e.g. us-east-1)", region, region_src);
    if (set_str(&c->region, region))
        OOM();

    /* Endpoint. */
    const char *ignore = env("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS");
    if (!ignore)
        ignore = ini_get(&conf, cfsec, "ignore_configured_endpoint_urls");
    int use_configured = !truthy(ignore);
    const char *svc = ini_get(&conf, cfsec, "services");
    char svcsec[300] = "";
    if (svc)
        snprintf(svcsec, sizeof svcsec, "services %s", svc);
    const char *ep = NULL, *ep_src = NULL;
    if (endpoint_override && *endpoint_override) {
        ep = endpoint_override;
        ep_src = "--endpoint";
    } else if (use_configured) {
        if ((ep = env("AWS_ENDPOINT_URL_S3")))
            ep_src = "AWS_ENDPOINT_URL_S3";
        else if ((ep = env("AWS_ENDPOINT_URL")))
            ep_src = "AWS_ENDPOINT_URL";
        else if (svc && (ep = ini_get(&conf, svcsec, "s3.endpoint_url")))
            ep_src = "endpoint_url in the profile's services section";
        else if ((ep = ini_get(&conf, cfsec, "endpoint_url")))
            ep_src = "endpoint_url in the profile";
    }
    if (ep) {
        s3_endpoint e;
        if ((rc = s3_endpoint_parse(ep, ep_src, &e, err, errlen)))
            goto out;
        size_t n = strlen(e.scheme) + strlen(e.authority) + 4;
        c->endpoint = malloc(n);
        if (c->endpoint)
            snprintf(c->endpoint, n, "%s://%s", e.scheme, e.authority);
        s3_endpoint_free(&e);
        if (!c->endpoint)
            OOM();
        c->path_style = 1;
    } else {
        const char *suffix = !strncmp(region, "cn-", 3) ? "amazonaws.com.cn" : "amazonaws.com";
        size_t n = strlen(region) + strlen(suffix) + 16;
        c->endpoint = malloc(n);
        if (!c->endpoint)
            OOM();
        snprintf(c->endpoint, n, "https://s3.%s.%s", region, suffix);
        c->path_style = 0;
    }
    const char *style = ini_get(&conf, cfsec, "s3.addressing_style");
    if (style && !strcmp(style, "path"))
        c->path_style = 1;
    else if (style && !strcmp(style, "virtual"))
        c->path_style = 0;

    /* TLS. */
    c->tls_verify = !truthy(env("S4KV_S3_INSECURE_TLS"));
    const char *ca = env("AWS_CA_BUNDLE");
    if (!ca)
        ca = ini_get(&conf, cfsec, "ca_bundle");
    if (ca) {
        char *x = expand_home(ca);
        if (!x)
            OOM();
        c->ca_file = x;
        if (access(x, R_OK))
            FAIL(S4KV_EINVAL, "CA bundle %s (AWS_CA_BUNDLE or ca_bundle): %s", x,
                 strerror(errno));
    }

    /* Retries and sizes. */
    const char *ma = env("AWS_MAX_ATTEMPTS");
    const char *ma_src = "AWS_MAX_ATTEMPTS";
    if (!ma && (ma = ini_get(&conf, cfsec, "max_attempts")))
        ma_src = "max_attempts in the profile";
    c->max_attempts = 3;
    if (ma) {
        char *end;
        long v = strtol(ma, &end, 10);
        if (end == ma || *end || v < 1 || v > 100)
            FAIL(S4KV_EINVAL, "%s '%.20s': must be a whole number from 1 to 100", ma_src, ma);
        c->max_attempts = (int)v;
    }
    c->connect_timeout_ms = 5000;
    c->request_timeout_ms = 0;
    c->multipart_threshold = 16 * MIB;
    c->part_size = 8 * MIB;
    c->max_parallel = 8;

out:
    ini_free(&cred);
    ini_free(&conf);
    free(cred_path);
    free(conf_path);
    if (rc)
        s3_config_free(c);
    return rc;
#undef FAIL
#undef OOM
}

/* ---- s3:// URLs */

int s3_bucket_name_ok(const char *b)
{
    size_t n = strlen(b);
    if (n < 3 || n > 63)
        return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)b[i];
        if (!(islower(ch) || isdigit(ch) || ch == '.' || ch == '-'))
            return 0;
        if (ch == '.' && i && b[i - 1] == '.')
            return 0;
    }
    if (!isalnum((unsigned char)b[0]) || !isalnum((unsigned char)b[n - 1]))
        return 0;
    int a, bb, cc, d;
    char tail;
    if (sscanf(b, "%d.%d.%d.%d%c", &a, &bb, &cc, &d, &tail) == 4)
        return 0; /* looks like an IPv4 address */
    return 1;
}

int s3_url_parse(const char *url, char **bucket, char **prefix, char *err, size_t errlen)
{
    *bucket = NULL;
    *prefix = NULL;
    if (!url || strncmp(url, "s3://", 5)) {
        if (err)
            snprintf(err, errlen, "S3 URL '%.100s': must start with s3:// (s3://BUCKET/PREFIX/)",
                     url ? url : "");
        return S4KV_EINVAL;
    }
    const char *b = url + 5;
    size_t blen = strcspn(b, "/");
    if (blen == 0) {
        if (err)
            snprintf(err, errlen, "S3 URL '%.100s': no bucket name (s3://BUCKET/PREFIX/)", url);
        return S4KV_EINVAL;
    }
    char *bk = strndup(b, blen);
    if (!bk) {
        if (err)
            snprintf(err, errlen, "out of memory");
        return S4KV_ENOMEM;
    }
    if (!s3_bucket_name_ok(bk)) {
        if (err)
            snprintf(err, errlen, "S3 URL '%.100s': bad bucket name '%.70s' (3 to 63 "
                     "characters: lower-case letters, digits, '.' and '-', starting and "
                     "ending with a letter or digit)", url, bk);
        free(bk);
        return S4KV_EINVAL;
    }
    const char *p = b[blen] == '/' ? b + blen + 1 : b + blen;
    for (const char *q = p; *q; q++) {
        if ((unsigned char)*q < 0x20 || *q == 0x7f) {
            if (err)
                snprintf(err, errlen, "S3 URL '%.100s': control character in the prefix", url);
            free(bk);
            return S4KV_EINVAL;
        }
    }
    size_t plen = strlen(p);
    if (plen > 900) {
        if (err)
            snprintf(err, errlen, "S3 URL: prefix longer than 900 bytes");
        free(bk);
        return S4KV_EINVAL;
    }
    char *px = malloc(plen + 2);
    if (!px) {
        free(bk);
        if (err)
            snprintf(err, errlen, "out of memory");
        return S4KV_ENOMEM;
    }
    memcpy(px, p, plen);
    if (plen && p[plen - 1] != '/')
        px[plen++] = '/';
    px[plen] = 0;
    *bucket = bk;
    *prefix = px;
    return 0;
}
