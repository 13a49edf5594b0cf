// What the user may do, from GET /whoami's roles and perms (job:<glob>:r|x, see core/permissions.py).
// Only to hide controls: the server checks every request again.

const PERMISSION = /^job:([A-Za-z0-9_.*?[\]!-]+):([rx])$/;

/** fnmatch's glob (* ? [seq] [!seq]) as an anchored RegExp. */
export function globRegExp(glob) {
  let out = "";
  for (let i = 0; i < glob.length; i++) {
    const c = glob[i];
    if (c === "*") out += ".*";
    else if (c === "?") out += ".";
    else if (c === "[") {
      const end = glob.indexOf("]", i + 2);
      if (end < 0) { out += "\\["; continue; }
      let body = glob.slice(i + 1, end);
      if (body.startsWith("!")) body = "^" + body.slice(1);
      out += "[" + body.replace(/\\/g, "\\\\") + "]";
      i = end;
    } else out += c.replace(/[.+^${}()|\\/-]/g, "\\$&");
  }
  return new RegExp("^(?:" + out + ")$", "s");
}

export function isAdmin(user) {
  return Boolean(user && user.active !== false && (user.admin || (user.roles || []).includes("admin")));
}

/** Whether user may read ("r") or execute ("x") jobs of qualName. */
export function may(user, qualName, action) {
  if (!user || user.active === false) return false;
  if (isAdmin(user)) return true;
  for (const permission of user.perms || []) {
    const match = PERMISSION.exec(permission);
    if (!match || (action === "x" && match[2] !== "x")) continue;
    if (globRegExp(match[1]).test(qualName)) return true;
  }
  return false;
}

/** Whether user may execute anything at all. */
export function mayExecuteSome(user) {
  return isAdmin(user) || (user?.perms || []).some((p) => p.endsWith(":x"));
}
