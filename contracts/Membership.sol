// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.28;

/// @title Membership: the consortium's member registry and its governance.
/// @notice States the membership rules of docs/rules.md (`member.propose`, `member.vote`).
/// A member has a string id (as in the genesis file), a set of roles and one or more
/// addresses: on the EVM an address plays the part of a member's public key, so a call is
/// made "as" the member that holds `msg.sender`. A caller whose address belongs to no
/// member gets `unknown-sender`; the native engine's `signer-not-authorized` has no EVM
/// counterpart (the caller cannot claim another member's id).
///
/// Every member id gets a number the first time it is seen, kept for ever (a member
/// removed and added again keeps its number): the other contracts store these numbers
/// instead of strings, which keeps an asset record in two storage slots.
contract Membership {
    uint8 public constant ROLE_MEMBER = 1;
    uint8 public constant ROLE_SUPPLIER = 2;
    uint8 public constant ROLE_CARRIER = 4;
    uint8 public constant ROLE_AUDITOR = 8;
    uint8 public constant ROLE_OPERATOR = 16;
    uint8 internal constant ROLES_ALL = 31;

    uint8 public constant ACTION_ADD = 1;
    uint8 public constant ACTION_REMOVE = 2;

    uint8 public constant PROPOSAL_OPEN = 1;
    uint8 public constant PROPOSAL_PASSED = 2;
    uint8 public constant PROPOSAL_REJECTED = 3;

    uint8 internal constant VOTER = 1;
    uint8 internal constant VOTED_APPROVE = 2;
    uint8 internal constant VOTED_REJECT = 3;

    /// Bounds shared with node/limits.py.
    uint256 public constant MEMBERS_MAX = 1000;
    uint256 public constant KEYS_PER_MEMBER_MAX = 8;
    uint256 internal constant ID_BYTES_MAX = 64;
    uint256 internal constant TEXT_BYTES_MAX = 512; // 128 characters of up to 4 UTF-8 bytes

    /// A member entry as in the genesis file, with addresses in place of public keys.
    struct MemberEntry {
        string id;
        string name;
        uint8 roles;
        address[] keys;
    }

    struct MemberRecord {
        string id;
        string name;
        uint8 roles;
        bool active;
        address[] keys;
    }

    struct Proposal {
        uint8 status;
        uint8 action;
        uint32 proposer;
        uint32 voters;
        uint32 approvals;
        uint32 rejections;
        MemberEntry member;
    }

    /// records[0] is a placeholder so that number 0 means "no member".
    MemberRecord[] internal records;
    mapping(string => uint32) internal numberOfId;
    mapping(address => uint32) internal numberOfKey;
    uint32 public memberCount;
    mapping(bytes32 => Proposal) internal proposals;
    mapping(bytes32 => mapping(uint32 => uint8)) internal ballots;

    event MemberAdded(string id, uint32 number, uint8 roles, address[] keys);
    event MemberRemoved(string id, uint32 number);
    event ProposalOpened(
        bytes32 indexed proposalId, string proposer, uint8 action, string memberId, uint32 voters
    );
    event Voted(bytes32 indexed proposalId, string voter, bool approve);
    event ProposalDecided(bytes32 indexed proposalId, uint8 status);

    constructor(MemberEntry[] memory genesisMembers) {
        records.push();
        require(genesisMembers.length >= 1, "invalid-payload");
        for (uint256 i = 0; i < genesisMembers.length; i++) {
            MemberEntry memory entry = genesisMembers[i];
            _checkEntry(entry);
            require(!_isMemberId(entry.id), "member-exists");
            require(!_anyKeyInUse(entry.keys), "key-in-use");
            _add(entry);
        }
    }

    // --- views for the other contracts and for clients -----------------------------------

    /// The member number and roles of the member holding `account`; reverts `unknown-sender`.
    function senderOf(address account) external view returns (uint32 number, uint8 roles) {
        number = numberOfKey[account];
        require(number != 0, "unknown-sender");
        return (number, records[number].roles);
    }

    /// The number and roles of the member `id`, or (0, 0) when `id` is not a member now.
    function memberOf(string calldata id) external view returns (uint32 number, uint8 roles) {
        number = numberOfId[id];
        if (number == 0 || !records[number].active) {
            return (0, 0);
        }
        return (number, records[number].roles);
    }

    /// The id behind a member number ("" for 0).
    function idOf(uint32 number) external view returns (string memory) {
        return records[number].id;
    }

    function member(string calldata id)
        external
        view
        returns (bool active, string memory name, uint8 roles, address[] memory keys)
    {
        uint32 number = numberOfId[id];
        if (number == 0) {
            return (false, "", 0, new address[](0));
        }
        MemberRecord storage record = records[number];
        return (record.active, record.name, record.roles, record.keys);
    }

    function proposal(bytes32 proposalId)
        external
        view
        returns (
            uint8 status,
            uint8 action,
            string memory memberId,
            uint32 voters,
            uint32 approvals,
            uint32 rejections
        )
    {
        Proposal storage p = proposals[proposalId];
        return (p.status, p.action, p.member.id, p.voters, p.approvals, p.rejections);
    }

    // --- governance -----------------------------------------------------------------------

    /// `member.propose`: the proposal id is the transaction id.
    function propose(bytes32 txId, uint8 action, MemberEntry calldata entry) external {
        require(action == ACTION_ADD || action == ACTION_REMOVE, "invalid-payload");
        _checkEntry(entry);
        uint32 sender = _sender();
        require(records[sender].roles & ROLE_MEMBER != 0, "role-not-allowed");
        _requireApplicable(action, entry);
        require(proposals[txId].status == 0, "duplicate-tx");

        Proposal storage p = proposals[txId];
        p.status = PROPOSAL_OPEN;
        p.action = action;
        p.proposer = sender;
        p.member = entry;
        uint32 voters = 0;
        for (uint32 number = 1; number < records.length; number++) {
            if (records[number].active && records[number].roles & ROLE_MEMBER != 0) {
                ballots[txId][number] = VOTER;
                voters++;
            }
        }
        p.voters = voters;
        emit ProposalOpened(txId, records[sender].id, action, entry.id, voters);
        _vote(txId, p, sender, true);
    }

    /// `member.vote`.
    function vote(bytes32 txId, bytes32 proposalId, bool approve) external {
        txId; // part of every call's signature; votes create no asset event
        uint32 sender = _sender();
        Proposal storage p = proposals[proposalId];
        require(p.status != 0, "unknown-proposal");
        require(p.status == PROPOSAL_OPEN, "proposal-closed");
        uint8 ballot = ballots[proposalId][sender];
        require(ballot != 0, "not-voter");
        require(ballot == VOTER, "already-voted");
        _vote(proposalId, p, sender, approve);
    }

    function _vote(bytes32 proposalId, Proposal storage p, uint32 voter, bool approve) internal {
        ballots[proposalId][voter] = approve ? VOTED_APPROVE : VOTED_REJECT;
        if (approve) {
            p.approvals++;
        } else {
            p.rejections++;
        }
        emit Voted(proposalId, records[voter].id, approve);
        uint256 voters = p.voters;
        if (3 * uint256(p.approvals) > 2 * voters) {
            // A proposal that can no longer be applied fails the deciding call, which
            // reverts the vote with it: nothing changes (docs/rules.md, member.vote).
            _requireApplicable(p.action, p.member);
            p.status = PROPOSAL_PASSED;
            emit ProposalDecided(proposalId, PROPOSAL_PASSED);
            if (p.action == ACTION_ADD) {
                _add(p.member);
            } else {
                _remove(p.member.id);
            }
        } else if (3 * (voters - p.rejections) <= 2 * voters) {
            p.status = PROPOSAL_REJECTED;
            emit ProposalDecided(proposalId, PROPOSAL_REJECTED);
        }
    }

    // --- internals ------------------------------------------------------------------------

    function _sender() internal view returns (uint32 number) {
        number = numberOfKey[msg.sender];
        require(number != 0, "unknown-sender");
    }

    function _isMemberId(string memory id) internal view returns (bool) {
        uint32 number = numberOfId[id];
        return number != 0 && records[number].active;
    }

    function _anyKeyInUse(address[] memory keys) internal view returns (bool) {
        for (uint256 i = 0; i < keys.length; i++) {
            if (numberOfKey[keys[i]] != 0) {
                return true;
            }
        }
        return false;
    }

    function _requireApplicable(uint8 action, MemberEntry memory entry) internal view {
        if (action == ACTION_ADD) {
            require(!_isMemberId(entry.id), "member-exists");
            require(!_anyKeyInUse(entry.keys), "key-in-use");
        } else {
            require(_isMemberId(entry.id), "unknown-member");
        }
    }

    /// The structural part of the payload schema that this contract's correctness depends
    /// on. Character classes of ids and names are checked at admission by the node.
    function _checkEntry(MemberEntry memory entry) internal pure {
        uint256 idLength = bytes(entry.id).length;
        require(idLength >= 1 && idLength <= ID_BYTES_MAX, "invalid-payload");
        uint256 nameLength = bytes(entry.name).length;
        require(nameLength >= 1 && nameLength <= TEXT_BYTES_MAX, "invalid-payload");
        require(entry.roles != 0 && entry.roles & ~ROLES_ALL == 0, "invalid-payload");
        uint256 keyCount = entry.keys.length;
        require(keyCount >= 1 && keyCount <= KEYS_PER_MEMBER_MAX, "invalid-payload");
        for (uint256 i = 0; i < keyCount; i++) {
            require(entry.keys[i] != address(0), "invalid-payload");
            for (uint256 j = 0; j < i; j++) {
                require(entry.keys[i] != entry.keys[j], "invalid-payload");
            }
        }
    }

    function _add(MemberEntry memory entry) internal {
        require(memberCount < MEMBERS_MAX, "invalid-payload");
        uint32 number = numberOfId[entry.id];
        if (number == 0) {
            number = uint32(records.length);
            records.push();
            numberOfId[entry.id] = number;
            records[number].id = entry.id;
        }
        MemberRecord storage record = records[number];
        record.name = entry.name;
        record.roles = entry.roles;
        record.active = true;
        delete record.keys;
        for (uint256 i = 0; i < entry.keys.length; i++) {
            record.keys.push(entry.keys[i]);
            numberOfKey[entry.keys[i]] = number;
        }
        memberCount++;
        emit MemberAdded(entry.id, number, entry.roles, entry.keys);
    }

    function _remove(string memory id) internal {
        uint32 number = numberOfId[id];
        MemberRecord storage record = records[number];
        for (uint256 i = 0; i < record.keys.length; i++) {
            delete numberOfKey[record.keys[i]];
        }
        delete record.keys;
        record.active = false;
        memberCount--;
        emit MemberRemoved(id, number);
    }
}
