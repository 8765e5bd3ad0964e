// A real OpenID Connect provider for the --auth oidc tests: panva's oidc-provider (OpenID
// Certified) with its dev login form (any password), one static client, a few accounts with
// groups, and a fresh signing key (with a fresh kid) every start.
//
//   node provider.mjs   with PORT, ISSUER, CLIENT_SECRET, REDIRECT_URI and MISBEHAVE set.
//
// MISBEHAVE (test-only): the provider signs ID tokens that a client must refuse: its own
// key over a wrong `aud`, `azp`, `iss` or `nonce`, several audiences without `azp`, or an
// `exp` in the past; or a foreign key under its own kid (`foreign-key`). Empty: a
// well-behaved provider.
import { generateKeyPairSync, randomUUID } from 'node:crypto';
import Provider from 'oidc-provider';
import { SignJWT, decodeJwt, decodeProtectedHeader, importJWK } from 'jose';

const { PORT, ISSUER, CLIENT_SECRET, REDIRECT_URI, MISBEHAVE = '' } = process.env;
// ALG: the client's ID token algorithm. HS256 signs with the client secret (a client must
// refuse it); the provider's own key is then an RS256 one.
const ALG = process.env.ALG || 'RS256';
const KEY_ALG = ALG.startsWith('HS') ? 'RS256' : ALG;

function freshKey(kid) {
  const pair = KEY_ALG === 'ES256'
    ? generateKeyPairSync('ec', { namedCurve: 'P-256' })
    : generateKeyPairSync('rsa', { modulusLength: 2048 });
  return { ...pair.privateKey.export({ format: 'jwk' }), kid, alg: KEY_ALG, use: 'sig' };
}

const kid = randomUUID();
const signing = freshKey(kid);

// account id (what the dev form's "login" field takes) -> its claims
const ACCOUNTS = {
  alice: { preferred_username: 'alice', name: 'Alice', groups: ['team', 'gpu'] },
  bob: { preferred_username: 'Bob@Example.org', name: 'Bob', groups: ['team'] },
  mallory: { preferred_username: 'mallory', name: 'Mallory', groups: ['visitors'] },
  rooty: { preferred_username: 'root', name: 'Root', groups: ['team'] },
  daemony: { preferred_username: 'daemon', name: 'Daemon', groups: ['team'] },
  weird: { preferred_username: 'we ird;rm -rf', name: 'Weird', groups: ['team'] },
};

const provider = new Provider(ISSUER, {
  clients: [{
    client_id: 'mixvllm',
    client_secret: CLIENT_SECRET,
    redirect_uris: [REDIRECT_URI],
    grant_types: ['authorization_code'],
    response_types: ['code'],
    id_token_signed_response_alg: ALG,
  }],
  jwks: { keys: [signing] },
  enabledJWA: { idTokenSigningAlgValues: ['RS256', 'PS256', 'ES256', 'HS256'] },
  pkce: { required: () => true },
  claims: { openid: ['sub'], profile: ['preferred_username', 'name'], groups: ['groups'] },
  scopes: ['openid', 'profile', 'groups'],
  // Scope claims in the ID token itself (as Keycloak, GitLab and Google send them).
  conformIdTokenClaims: false,
  features: { devInteractions: { enabled: true } },
  async findAccount(ctx, id) {
    if (!ACCOUNTS[id]) return undefined;
    return { accountId: id, claims: async () => ({ sub: id, ...ACCOUNTS[id] }) };
  },
  async loadExistingGrant(ctx) {
    // The user has consented already (no consent form): a grant for what was asked.
    const grant = new ctx.oidc.provider.Grant({
      clientId: ctx.oidc.client.clientId, accountId: ctx.oidc.session.accountId,
    });
    grant.addOIDCScope('openid profile groups');
    grant.addOIDCClaims(['preferred_username', 'name', 'groups']);
    await grant.save();
    return grant;
  },
});
provider.proxy = false;

if (MISBEHAVE) {
  const original = provider.IdToken.prototype.issue;
  const foreign = freshKey(kid);
  provider.IdToken.prototype.issue = async function issue(options) {
    const token = await original.call(this, options);
    if (options?.use !== 'idtoken') return token;
    const claims = decodeJwt(token);
    const now = Math.floor(Date.now() / 1000);
    if (MISBEHAVE === 'aud') claims.aud = 'someone-else';
    if (MISBEHAVE === 'multi-aud') { claims.aud = [claims.aud, 'someone-else']; delete claims.azp; }
    if (MISBEHAVE === 'azp') claims.azp = 'someone-else';
    if (MISBEHAVE === 'iss') claims.iss = 'http://127.0.0.1:1/';
    if (MISBEHAVE === 'nonce') claims.nonce = 'not-the-one-sent';
    if (MISBEHAVE === 'expired') Object.assign(claims, { iat: now - 7200, exp: now - 3600 });
    const key = await importJWK(MISBEHAVE === 'foreign-key' ? foreign : signing, KEY_ALG);
    return new SignJWT(claims).setProtectedHeader(decodeProtectedHeader(token)).sign(key);
  };
}

provider.listen(Number(PORT), '127.0.0.1', () => {
  console.log(`oidc-provider ready on ${ISSUER} (kid ${kid}${MISBEHAVE ? `, ${MISBEHAVE}` : ''})`);
});
