// A real OAuth 2.1 / OpenID authorization server for the test suite, built on oidc-provider 9.
//
// Usage: node idp.mjs [PORT]
//   PORT                 or IDP_PORT; the issuer is http://127.0.0.1:PORT
//   IDP_NODE_MODULES     folder holding oidc-provider and jose (default: ../../.tools/npm/node_modules)
//   IDP_JWKS_FILE        private JWK set to sign JWT access tokens with (the first key signs);
//                        without it a fresh RS256 key is generated at start
//   IDP_CLIENT_SECRET    secret of the confidential test clients (mcp-client*)
//   IDP_GATEWAY_SECRET   secret of the gateway's own client (mcp-gateway)
//   IDP_CIMD_ORIGIN      HTTPS origin of Client ID Metadata Documents (e.g. https://client.test), fetched
//                        instead from IDP_CIMD_SERVE (e.g. http://127.0.0.1:PORT): a test serves the
//                        documents over plain HTTP on loopback, which CIMD itself would never fetch
//
// What it offers: client credentials, authorization code + PKCE (headless through the dev
// interaction forms), refresh tokens, revocation, introspection (RFC 7662), dynamic client
// registration, Client ID Metadata Documents (draft-02; client_id is an https URL), resource indicators (RFC 8707) where any http(s) resource is accepted (JWT access
// tokens, opaque ones for clients whose metadata says access_token_format=opaque or resources whose
// URL contains "opaque"), and token exchange (RFC 8693) registered as a custom grant type because
// oidc-provider has no built-in one. Tokens carry a `groups` claim from the client metadata
// (client credentials) or the account store (users).

import * as crypto from 'node:crypto';
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const modules = process.env.IDP_NODE_MODULES || join(here, '..', '..', '.tools', 'npm', 'node_modules');
const { default: Provider, errors } = await import(pathToFileURL(join(modules, 'oidc-provider', 'lib', 'index.js')).href);
const jose = await import(pathToFileURL(join(modules, 'jose', 'dist', 'webapi', 'index.js')).href);

const port = Number(process.argv[2] || process.env.IDP_PORT || 4000);
const issuer = `http://127.0.0.1:${port}`;
const clientSecret = process.env.IDP_CLIENT_SECRET || 'dev-client-secret-not-for-production';
const gatewaySecret = process.env.IDP_GATEWAY_SECRET || 'dev-gateway-secret-not-for-production';

const TOKEN_EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange';
const ACCESS_TOKEN_TYPE = 'urn:ietf:params:oauth:token-type:access_token';
const RESOURCE_SCOPES = 'mcp:tools mcp:admin upstream:read';

// Users the login form accepts (any other login gets the "users" group).
const ACCOUNTS = {
  alice: { groups: ['engineering', 'admins'], email: 'alice@example.test' },
  bob: { groups: ['support'], email: 'bob@example.test' },
};

async function signingKeys() {
  if (process.env.IDP_JWKS_FILE) {
    return JSON.parse(readFileSync(process.env.IDP_JWKS_FILE, 'utf8'));
  }
  const { privateKey } = await jose.generateKeyPair('RS256', { extractable: true });
  const jwk = await jose.exportJWK(privateKey);
  return { keys: [{ ...jwk, kid: crypto.randomUUID(), alg: 'RS256', use: 'sig' }] };
}

const jwks = await signingKeys();
const publicJwks = {
  keys: jwks.keys.map(({ d, p, q, dp, dq, qi, ...pub }) => pub), // drop the private parts
};
const localKeySet = jose.createLocalJWKSet(publicJwks);

function confidential(clientId, extra = {}) {
  return {
    client_id: clientId,
    client_secret: clientSecret,
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
    ...extra,
  };
}

const clients = [
  confidential('mcp-client', { groups: ['engineering'] }),
  confidential('mcp-client-opaque', { groups: ['support'], access_token_format: 'opaque' }),
  confidential('mcp-client-short', { groups: ['engineering'], access_token_ttl: 1 }),
  confidential('mcp-gateway', {
    client_secret: gatewaySecret,
    grant_types: ['client_credentials', TOKEN_EXCHANGE],
    groups: ['gateway'],
  }),
  {
    client_id: 'mcp-public',
    token_endpoint_auth_method: 'none',
    application_type: 'native',
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
    redirect_uris: ['http://127.0.0.1/callback'],
  },
];

// Per-request facts the token exchange handler hands to extraTokenClaims.
const exchangeSubjects = new WeakMap();

function resourceServerInfo(resource, client) {
  const metadata = client?.metadata() ?? {};
  const opaque = metadata.access_token_format === 'opaque' || resource.includes('opaque');
  return {
    scope: RESOURCE_SCOPES,
    audience: resource,
    accessTokenTTL: metadata.access_token_ttl || 300,
    accessTokenFormat: opaque ? 'opaque' : 'jwt',
    jwt: { sign: { alg: 'RS256' } },
  };
}

function tokenTtl(_ctx, token, client) {
  return token.resourceServer?.accessTokenTTL || client?.metadata().access_token_ttl || 300;
}

const cimdOrigin = process.env.IDP_CIMD_ORIGIN;
const cimdServe = process.env.IDP_CIMD_SERVE;

// Outgoing fetches (CIMD documents only): an https://IDP_CIMD_ORIGIN/... URL is read from
// IDP_CIMD_SERVE/... instead, without the SSRF guard (which refuses loopback, where the test serves).
async function fetchForTests(url, options) {
  const target = String(url);
  if (cimdOrigin && cimdServe && target.startsWith(`${cimdOrigin}/`)) {
    const { dispatcher: _unused, ...rest } = options;
    return globalThis.fetch(cimdServe + target.slice(cimdOrigin.length), rest);
  }
  return globalThis.fetch(url, options);
}

const provider = new Provider(issuer, {
  clients,
  fetch: fetchForTests,
  jwks,
  cookies: { keys: [crypto.randomBytes(32).toString('hex')] },
  scopes: ['openid', 'offline_access', 'mcp:tools', 'mcp:admin', 'upstream:read'],
  claims: { openid: ['sub'], email: ['email'], groups: ['groups'] },
  extraClientMetadata: { properties: ['groups', 'access_token_format', 'access_token_ttl'] },
  pkce: { required: () => true },
  ttl: {
    AccessToken: tokenTtl,
    ClientCredentials: tokenTtl,
    AuthorizationCode: 60,
    RefreshToken: 3600,
    Grant: 3600,
    Interaction: 600,
    Session: 3600,
    IdToken: 300,
  },
  async findAccount(_ctx, id) {
    const account = ACCOUNTS[id] || { groups: ['users'], email: `${id}@example.test` };
    return { accountId: id, async claims() { return { sub: id, ...account }; } };
  },
  async extraTokenClaims(ctx, token) {
    const subject = ctx && exchangeSubjects.get(ctx);
    if (subject) {
      return { groups: subject.groups ?? [], act: { sub: token.clientId } };
    }
    if (token.kind === 'ClientCredentials') {
      return { groups: token.client?.metadata().groups ?? [] };
    }
    if (token.accountId) {
      return { groups: (ACCOUNTS[token.accountId] || { groups: ['users'] }).groups };
    }
    return undefined;
  },
  issueRefreshToken: async (_ctx, client) => client.grantTypeAllowed('refresh_token'),
  features: {
    devInteractions: { enabled: true },
    clientCredentials: { enabled: true },
    introspection: { enabled: true, allowedPolicy: async (_ctx, client) => client.clientAuthMethod !== 'none' },
    revocation: { enabled: true, allowedPolicy: async (_ctx, client, token) => client.clientId === token.clientId },
    registration: { enabled: true },
    clientIdMetadataDocument: { enabled: true, ack: 'draft-02' },
    resourceIndicators: {
      enabled: true,
      defaultResource: async (_ctx, _client, oneOf) => (oneOf ? oneOf[0] : undefined),
      useGrantedResource: async () => true,
      getResourceServerInfo: async (_ctx, resource, client) => {
        if (!/^https?:\/\//.test(resource)) {
          throw new errors.InvalidTarget('resources must be http(s) URLs');
        }
        return resourceServerInfo(resource, client);
      },
    },
  },
});

// The token exchange grant (RFC 8693): a confidential client trades a user's access token for one
// whose audience is another resource, keeping the subject and groups.
async function validateSubjectToken(value) {
  if (value.split('.').length === 3) {
    try {
      const { payload } = await jose.jwtVerify(value, localKeySet, { issuer });
      return payload;
    } catch {
      return undefined;
    }
  }
  const stored = (await provider.AccessToken.find(value)) || (await provider.ClientCredentials.find(value));
  if (!stored || !stored.isValid) return undefined;
  return { sub: stored.accountId || stored.clientId, exp: stored.exp, ...(stored.extra || {}) };
}

provider.registerGrantType(TOKEN_EXCHANGE, async (ctx) => {
  const { client, params } = ctx.oidc;
  if (!params.subject_token) throw new errors.InvalidRequest('missing required parameter subject_token');
  if (params.subject_token_type !== ACCESS_TOKEN_TYPE) {
    throw new errors.InvalidRequest('unsupported subject_token_type');
  }
  const subject = await validateSubjectToken(params.subject_token);
  if (!subject) throw new errors.InvalidGrant('subject_token is invalid, expired or revoked');
  const target = params.resource || params.audience;
  if (!target) throw new errors.InvalidTarget('an audience or resource is required');
  if (!/^https?:\/\//.test(target)) throw new errors.InvalidTarget('audience must be an http(s) URL');

  const info = resourceServerInfo(target, client);
  const allowed = new Set(info.scope.split(' '));
  const scope = (params.scope || '').split(' ').filter((s) => allowed.has(s)).join(' ') || undefined;
  const remaining = subject.exp ? subject.exp - Math.floor(Date.now() / 1000) : info.accessTokenTTL;
  const token = new provider.AccessToken({
    accountId: String(subject.sub),
    client,
    gty: 'token_exchange',
    scope,
    expiresIn: Math.max(1, Math.min(info.accessTokenTTL, remaining)),
  });
  token.resourceServer = new provider.ResourceServer(target, info);
  exchangeSubjects.set(ctx, subject);
  ctx.oidc.entity('AccessToken', token);
  const value = await token.save();
  ctx.body = {
    access_token: value,
    issued_token_type: ACCESS_TOKEN_TYPE,
    token_type: 'Bearer',
    expires_in: token.expiration,
    scope,
  };
}, ['subject_token', 'subject_token_type', 'actor_token', 'actor_token_type', 'requested_token_type',
  'audience', 'resource', 'scope']);

provider.on('server_error', (_ctx, err) => console.error('idp server_error', err));

provider.listen(port, '127.0.0.1', () => {
  console.log(`idp listening on ${issuer}`);
});

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => process.exit(0));
}
