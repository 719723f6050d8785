// mongo-init: turns the single mongod into a replica set of one, rs0, and waits until it is
// primary. Safe to run again. A replica set, even of one member, gives the services what a
// production MongoDB gives them (and what CARVE_MONGO_URL's replicaSet=rs0 asks for).
// The member's host is the compose service name: clients discover `mongo:27017` from it.
const config = { _id: "rs0", members: [{ _id: 0, host: "mongo:27017" }] };

try {
  rs.status();
  print("mongo-init: replica set rs0 already initiated");
} catch (err) {
  if (err.codeName !== "NotYetInitialized") {
    throw err;
  }
  rs.initiate(config);
  print("mongo-init: replica set rs0 initiated");
}

for (let waited = 0; waited < 60; waited++) {
  if (db.hello().isWritablePrimary) {
    print("mongo-init: mongo:27017 is primary");
    quit(0);
  }
  sleep(1000);
}
print("mongo-init: no primary after 60 s");
quit(1);
