// Node-RED settings for the peer benchmark: no editor, quiet logs, the pg driver available to
// function nodes. bench/nodered_peer.py writes flows.json next to this file.
module.exports = {
  flowFile: process.env.NR_FLOWS,
  userDir: process.env.NR_USERDIR,
  uiHost: "127.0.0.1",
  uiPort: Number(process.env.NR_PORT || 18880),
  httpAdminRoot: false,
  httpNodeRoot: false,
  credentialSecret: false,
  functionGlobalContext: { pg: require("pg"), peerDbUrl: process.env.PEER_DB_URL },
  logging: { console: { level: "info", metrics: false, audit: false } },
  editorTheme: { tours: false },
};
